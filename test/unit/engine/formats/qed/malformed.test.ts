// Malformed QED images give clear errors with offsets (bad geometry, unknown features, L1 past EOF,
// L2 entries past EOF), and fast-check header mutations never escape as anything but a VdiskError.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from '../../../../helpers/format-harness.ts';

describe('qed malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let valid: Uint8Array;
  beforeEach(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'valid.qed');
    await createWithDriver('qed', path, 4 << 20, { cluster_size: '4096', table_size: '2' });
    const device = await openImage(path);
    await device.write(0, new Uint8Array(10_000).fill(3));
    await device.close();
    valid = new Uint8Array(await readFile(path));
  });
  afterEach(async () => cleanup());

  const edit = (mutate: (view: DataView) => void): Uint8Array => {
    const bytes = Uint8Array.from(valid);
    mutate(new DataView(bytes.buffer));
    return bytes;
  };

  it('refuses cluster sizes that are not powers of two in range', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setUint32(4, 3000, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 4 });
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setUint32(4, 1 << 30, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 4 });
  });

  it('refuses unknown feature bits', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setUint32(16, 0x80, true)),
      ),
    ).toMatchObject({ code: 'VDISK_ENOTSUP' });
  });

  it('refuses an L1 table past the end of the file', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setBigUint64(40, 1n << 30n, true)),
      ),
    ).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 1 << 30 });
  });

  it('refuses an absurd image size', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setBigUint64(48, 1n << 52n, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 48 });
  });

  it('names an L1 entry that points past EOF', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qed',
        edit((v) => v.setBigUint64(4096, 1n << 40n, true)),
      ),
    ).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 4096 });
  });

  it('never throws anything but a VdiskError on mutated headers and tables', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(
            fc.oneof(
              fc.integer({ min: 0, max: 63 }),
              fc.integer({ min: 4096, max: 4200 }),
              fc.integer({ min: 12288, max: 12400 }),
            ),
            fc.integer({ min: 0, max: 255 }),
          ),
          { minLength: 1, maxLength: 6 },
        ),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'qed', bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 80 },
    );
  });
});
