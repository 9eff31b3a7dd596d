// Malformed VHDX images give clear errors: both headers damaged, bad region tables, absurd block and
// virtual sizes in the metadata, BAT entries past EOF; fast-check mutations of the metadata items and
// the BAT never escape as anything but a VdiskError.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from '../../../../helpers/format-harness.ts';

const MiB = 1 << 20;
// vdisk's layout: log at 1 MiB (1 MiB long), metadata region at 2 MiB (items from +64 KiB), BAT at 3 MiB.
const METADATA_ITEMS = 2 * MiB + 64 * 1024;
const BAT = 3 * MiB;

describe('vhdx malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let valid: Uint8Array;
  beforeEach(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'valid.vhdx');
    await createWithDriver('vhdx', path, 4 * MiB, { block_size: '1M' });
    const device = await openImage(path);
    await device.write(MiB + 5, new Uint8Array(5000).fill(9));
    await device.close();
    valid = new Uint8Array(await readFile(path));
  });
  afterEach(async () => cleanup());

  const edit = (mutate: (view: DataView, bytes: Uint8Array) => void): Uint8Array => {
    const bytes = Uint8Array.from(valid);
    mutate(new DataView(bytes.buffer), bytes);
    return bytes;
  };

  it('refuses an image whose two headers are both damaged', async () => {
    const err = await tryOpenBytes(
      dir,
      'vhdx',
      edit((_v, b) => {
        b[64 * 1024 + 20] = (b[64 * 1024 + 20] ?? 0) ^ 1;
        b[128 * 1024 + 20] = (b[128 * 1024 + 20] ?? 0) ^ 1;
      }),
    );
    expect(err).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 64 * 1024 });
  });

  it('falls back to the second header when the first is damaged', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'vhdx',
        edit((_v, b) => {
          b[64 * 1024 + 20] = (b[64 * 1024 + 20] ?? 0) ^ 1;
        }),
      ),
    ).toBeUndefined();
  });

  it('refuses a block size that is not a power of two in [1 MiB, 256 MiB]', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'vhdx',
        edit((v) => v.setUint32(METADATA_ITEMS, 3 * MiB, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT' });
  });

  it('refuses a virtual size whose BAT does not fit its region', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'vhdx',
        edit((v) => v.setBigUint64(METADATA_ITEMS + 8, 1n << 45n, true)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: BAT });
  });

  it('names a BAT entry pointing past the end of the file', async () => {
    const err = await tryOpenBytes(
      dir,
      'vhdx',
      edit((v) => v.setBigUint64(BAT + 8, (1000n << 20n) | 6n, true)),
    );
    expect(err).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: BAT + 8 });
  });

  it('never throws anything but a VdiskError on mutated metadata and BAT', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(
            fc.oneof(
              fc.integer({ min: 2 * MiB, max: 2 * MiB + 200 }),
              fc.integer({ min: METADATA_ITEMS, max: METADATA_ITEMS + 40 }),
              fc.integer({ min: BAT, max: BAT + 40 }),
            ),
            fc.integer({ min: 0, max: 255 }),
          ),
          { minLength: 1, maxLength: 6 },
        ),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'vhdx', bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });
});
