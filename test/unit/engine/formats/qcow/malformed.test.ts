// Malformed qcow (v1) images give clear errors (bad cluster/L2 bits, encryption, an L1 past EOF,
// entries past EOF), and fast-check mutations never escape as anything but a VdiskError.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from '../../../../helpers/format-harness.ts';

describe('qcow malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let valid: Uint8Array;
  beforeEach(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'valid.qcow');
    await createWithDriver('qcow', path, 4 << 20);
    const device = await openImage(path);
    await device.write(3000, new Uint8Array(9000).fill(5));
    await device.close();
    valid = new Uint8Array(await readFile(path));
  });
  afterEach(async () => cleanup());

  const edit = (mutate: (view: DataView) => void): Uint8Array => {
    const bytes = Uint8Array.from(valid);
    mutate(new DataView(bytes.buffer));
    return bytes;
  };

  it('refuses cluster and L2 sizes out of range', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow',
        edit((v) => v.setUint8(32, 30)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 32 });
    expect(
      await tryOpenBytes(
        dir,
        'qcow',
        edit((v) => v.setUint8(33, 2)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 33 });
  });

  it('refuses AES encryption as unsupported', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow',
        edit((v) => v.setUint32(36, 1, false)),
      ),
    ).toMatchObject({ code: 'VDISK_ENOTSUP' });
  });

  it('refuses an L1 table past the end of the file without allocating it', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow',
        edit((v) => v.setBigUint64(24, 1n << 45n, false)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 40 });
  });

  it('names an L1 entry pointing past EOF', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow',
        edit((v) => v.setBigUint64(48, 1n << 40n, false)),
      ),
    ).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 48 });
  });

  it('never throws anything but a VdiskError on mutated headers and tables', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 4, max: 48 + 64 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'qcow', bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 80 },
    );
  });
});
