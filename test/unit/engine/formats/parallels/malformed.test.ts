// Malformed Parallels images give clear errors (zero or huge clusters, a BAT past EOF, absurd sizes),
// and fast-check mutations of the header and BAT never escape as anything but a VdiskError.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from '../../../../helpers/format-harness.ts';

describe('parallels malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let valid: Uint8Array;
  beforeEach(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'valid.hds');
    await createWithDriver('parallels', path, 1 << 20, { cluster_size: '4096' });
    const device = await openImage(path);
    await device.write(5000, new Uint8Array(10_000).fill(3));
    await device.close();
    valid = new Uint8Array(await readFile(path));
  });
  afterEach(async () => cleanup());

  const edit = (mutate: (view: DataView) => void): Uint8Array => {
    const bytes = Uint8Array.from(valid);
    mutate(new DataView(bytes.buffer));
    return bytes;
  };

  it('refuses zero and huge cluster sizes', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'parallels',
        edit((v) => v.setUint32(28, 0, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 28 });
    expect(
      await tryOpenBytes(
        dir,
        'parallels',
        edit((v) => v.setUint32(28, 0x10000000, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 28 });
  });

  it('refuses a BAT that extends past the end of the file', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'parallels',
        edit((v) => v.setUint32(32, 0x1000000, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 32 });
  });

  it('refuses a size past 2^53 bytes', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'parallels',
        edit((v) => v.setBigUint64(36, 1n << 62n, true)),
      ),
    ).toMatchObject({ code: 'VDISK_ECORRUPT' });
  });

  it('never throws anything but a VdiskError on mutated headers and BATs', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 16, max: 64 + 4 * 8 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'parallels', bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 80 },
    );
  });
});
