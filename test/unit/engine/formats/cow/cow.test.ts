// UML COW files built from the published layout (UML cow_user.c, v2 and v3 headers, LSB-first sector
// bitmap, data at the aligned offset) read as their sectors over a raw backing file; malformed headers
// give clear errors and fast-check mutations never escape as anything but a VdiskError.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { scratchDir, seededBytes, sha256Device, tryOpenBytes } from '../../../../helpers/format-harness.ts';

const V2_BYTES = 4 + 4 + 4096 + 4 + 8 + 4;
const V3_BYTES = 4 + 4 + 4 + 8 + 4 + 4 + 4 + 4096;
const roundUp = (value: number, multiple: number): number => Math.ceil(value / multiple) * multiple;

/** A COW file over `backingName` holding `sectors` (sector -> 512 bytes). */
function buildCow(
  version: 2 | 3,
  backingName: string,
  sizeBytes: number,
  sectors: Map<number, Uint8Array>,
  alignment = 4096,
): Uint8Array {
  const headerBytes = version === 2 ? V2_BYTES : V3_BYTES;
  const bitmapOffset = version === 2 ? headerBytes : roundUp(headerBytes, alignment);
  const bitmapBytes = Math.ceil(sizeBytes / (8 * 512));
  const dataOffset = roundUp(bitmapOffset + bitmapBytes, version === 2 ? 512 : alignment);
  const image = Buffer.alloc(dataOffset + sizeBytes);
  image.writeUInt32BE(0x4f4f4f4d, 0);
  image.writeUInt32BE(version, 4);
  if (version === 2) {
    image.write(backingName, 8, 'latin1');
    image.writeUInt32BE(1_700_000_000, 8 + 4096);
    image.writeBigUInt64BE(BigInt(sizeBytes), 8 + 4096 + 4);
    image.writeInt32BE(512, 8 + 4096 + 12);
  } else {
    image.writeUInt32BE(1_700_000_000, 8);
    image.writeBigUInt64BE(BigInt(sizeBytes), 12);
    image.writeUInt32BE(512, 20);
    image.writeUInt32BE(alignment, 28);
    image.writeUInt32BE(0, 32);
    image.write(backingName, 36, 'latin1');
  }
  for (const [sector, data] of sectors) {
    image[bitmapOffset + (sector >> 3)] = (image[bitmapOffset + (sector >> 3)] ?? 0) | (1 << (sector & 7));
    image.set(data, dataOffset + sector * 512);
  }
  return image;
}

describe('UML COW files', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  for (const version of [2, 3] as const) {
    it(`reads a v${version} file over its backing file`, async () => {
      const sizeBytes = 1 << 20;
      const backing = seededBytes(sizeBytes, 40 + version);
      await writeFile(join(dir, 'base.img'), backing);
      const sectors = new Map<number, Uint8Array>();
      for (const sector of [0, 1, 9, 100, 101, 102, 2047]) sectors.set(sector, seededBytes(512, sector + 7));
      const path = join(dir, `disk.cow${version}`);
      await writeFile(path, buildCow(version, 'base.img', sizeBytes, sectors));
      const expected = Buffer.from(backing);
      for (const [sector, data] of sectors) expected.set(data, sector * 512);
      const device = await openImage(path, { readOnly: true });
      try {
        expect(device.formatName).toBe('cow');
        expect(device.sizeBytes).toBe(sizeBytes);
        const whole = new Uint8Array(sizeBytes);
        await device.read(0, whole);
        expect(Buffer.from(whole).equals(expected)).toBe(true);
        expect((await device.info()).backingFilename).toBe('base.img');
        const status = await device.blockStatus(0, 4096);
        expect(status[0]).toMatchObject({ offsetBytes: 0, lengthBytes: 1024, allocated: true });
        expect(typeof (await sha256Device(device))).toBe('string');
      } finally {
        await device.close();
      }
    });
  }

  it('refuses an unknown version, a bad sector size and a bitmap past EOF', async () => {
    const valid = buildCow(3, '', 65536, new Map([[3, seededBytes(512, 1)]]));
    const edit = (mutate: (bytes: Buffer) => void): Uint8Array => {
      const bytes = Buffer.from(valid);
      mutate(bytes);
      return bytes;
    };
    expect(
      await tryOpenBytes(
        dir,
        'cow',
        edit((b) => b.writeUInt32BE(7, 4)),
      ),
    ).toMatchObject({ code: 'VDISK_ENOTSUP' });
    expect(
      await tryOpenBytes(
        dir,
        'cow',
        edit((b) => b.writeUInt32BE(1000, 20)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 20 });
    expect(
      await tryOpenBytes(
        dir,
        'cow',
        edit((b) => b.writeBigUInt64BE(1n << 40n, 12)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT' });
  });

  it('never throws anything but a VdiskError on mutated headers', async () => {
    const valid = buildCow(3, '', 65536, new Map([[3, seededBytes(512, 1)]]));
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 5,
        }),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'cow', bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 60 },
    );
  });
});
