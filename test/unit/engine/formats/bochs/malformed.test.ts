// Malformed bochs headers give ImageFormatError / CorruptImageError with an offset, never a crash or a
// huge allocation: too-large catalogs and extents, a truncated catalog, and fast-check header mutations.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { buildBochs } from './build-bochs.ts';

function valid(): Uint8Array {
  return buildBochs({ diskBytes: 1 << 20, extentBytes: 4096, sectors: new Map([[3, seededBytes(512, 3)]]) });
}

describe('bochs malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  async function openBytes(bytes: Uint8Array): Promise<unknown> {
    const path = join(dir, 'bad.bochs');
    await writeFile(path, bytes);
    try {
      const device = await openImage(path, { readOnly: true, format: 'bochs' });
      await device.read(0, new Uint8Array(Math.min(device.sizeBytes, 1 << 20)));
      await device.blockStatus(0, device.sizeBytes);
      await device.close();
      return undefined;
    } catch (err) {
      return err;
    }
  }

  it('refuses a catalog larger than 256 Ki entries', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setUint32(72, 0x1000000, true);
    expect(await openBytes(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 72 });
  });

  it('refuses an extent larger than 8 MiB', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setUint32(80, 0x1000000, true);
    expect(await openBytes(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 80 });
  });

  it('refuses a catalog too small for the disk size', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setBigUint64(88, 1n << 40n, true);
    expect(await openBytes(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 72 });
  });

  it('names a truncated catalog', async () => {
    expect(await openBytes(valid().subarray(0, 600))).toMatchObject({
      code: 'VDISK_EFORMAT',
      offsetBytes: 512,
    });
  });

  it('never throws anything but a VdiskError on mutated headers', async () => {
    const base = valid();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 64, max: 95 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        async (edits) => {
          const bytes = Uint8Array.from(base);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await openBytes(bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 60 },
    );
  });
});
