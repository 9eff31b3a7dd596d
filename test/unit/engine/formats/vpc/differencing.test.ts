// Differencing VHDs (qemu-img cannot make them): a child built from the VHD spec's layout, with a W2ru
// parent locator and a partial sector bitmap, reads its own sectors where the bitmap bit is set and
// the parent's everywhere else; it opens read-only and names its parent in info.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildDynamicHeader,
  buildFooter,
  parseFooter,
} from '../../../../../src/engine/formats/vpc/footer.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';

const BLOCK_BYTES = 2 * 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

/** Writes a differencing child of `parentPath` whose block 1 holds `sectors` (sector index in block -> bytes). */
async function writeChild(
  childPath: string,
  parentPath: string,
  locatorText: string,
  sectors: Map<number, Uint8Array>,
): Promise<void> {
  const parentBytes = await readFile(parentPath);
  const parentFooter = parseFooter(parentBytes.subarray(0, 512), parentPath, 0);
  const sizeBytes = parentFooter.currentSizeBytes;
  const entryCount = Math.ceil(sizeBytes / BLOCK_BYTES);
  const batBytes = Math.ceil((entryCount * 4) / 512) * 512;
  const locatorOffset = 1536 + batBytes;
  const blockOffset = locatorOffset + 512;
  const footer = buildFooter({ ...parentFooter, diskType: 4, creatorApp: 'win ', dataOffsetBytes: 512 });
  const header = buildDynamicHeader(1536, entryCount, BLOCK_BYTES);
  const locator = Buffer.from(locatorText, 'utf16le');
  header.write('W2ru', 576, 'latin1');
  header.writeUInt32BE(512, 580);
  header.writeUInt32BE(locator.length, 584);
  header.writeBigUInt64BE(BigInt(locatorOffset), 592);
  const nameUtf16be = Buffer.from(locatorText, 'utf16le').swap16();
  nameUtf16be.copy(header, 64);
  const bat = Buffer.alloc(batBytes, 0xff);
  bat.writeUInt32BE(blockOffset / 512, 4); // block 1 only
  const bitmap = Buffer.alloc(512);
  const block = Buffer.alloc(BLOCK_BYTES, 0xee); // unset-bit sectors hold junk that must never show
  for (const [sector, bytes] of sectors) {
    bitmap[sector >> 3]! |= 0x80 >> (sector & 7);
    block.set(bytes, sector * 512);
  }
  const file = Buffer.concat([footer, header, bat, Buffer.alloc(512), bitmap, block, footer]);
  locator.copy(file, locatorOffset);
  await writeFile(childPath, file);
}

describe('vpc differencing disks', () => {
  it('reads bitmap-set sectors from the child and the rest from the parent', async () => {
    const parentPath = join(dir, 'parent.vhd');
    await createWithDriver('vpc', parentPath, 6 * 1024 * 1024, { force_size: 'on' });
    const parent = await openImage(parentPath, { format: 'vpc' });
    const parentData = seededBytes(parent.sizeBytes, 5);
    await parent.write(0, parentData);
    await parent.close();

    const sectors = new Map<number, Uint8Array>();
    for (const sector of [0, 1, 2, 7, 100, 101, 4095]) sectors.set(sector, seededBytes(512, 1000 + sector));
    const childPath = join(dir, 'child.vhd');
    await writeChild(childPath, parentPath, '.\\parent.vhd', sectors);

    const expected = Buffer.from(parentData);
    for (const [sector, bytes] of sectors) expected.set(bytes, BLOCK_BYTES + sector * 512);
    const child = await openImage(childPath, { readOnly: true });
    try {
      expect(child.formatName).toBe('vpc');
      expect(child.backing?.formatName).toBe('vpc');
      expect((await child.info()).backingFilename).toBe('parent.vhd');
      const actual = new Uint8Array(child.sizeBytes);
      await child.read(0, actual);
      expect(Buffer.from(actual).equals(expected)).toBe(true);
      const extents = await child.blockStatus(BLOCK_BYTES, 8 * 512);
      expect(extents.map((extent) => [extent.lengthBytes, extent.allocated])).toEqual([
        [3 * 512, true],
        [4 * 512, false],
        [512, true],
      ]);
    } finally {
      await child.close();
    }
  });

  it('refuses to open a differencing disk read-write', async () => {
    await expect(openImage(join(dir, 'child.vhd'), { readOnly: false })).rejects.toMatchObject({
      code: 'VDISK_ENOTSUP',
    });
  });
});
