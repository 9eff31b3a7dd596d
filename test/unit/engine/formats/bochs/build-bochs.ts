// Builds Bochs growing redolog images from the published layout (Bochs iodev/hdimage/hdimage.h), so
// tests can make images qemu-img and vdisk both read: header v2, catalog, bitmap + extent per entry.

import { writeFile } from 'node:fs/promises';

export interface BochsBuild {
  diskBytes: number;
  extentBytes: number;
  /** Sector number -> 512 bytes of content. */
  sectors: Map<number, Uint8Array>;
  catalogEntries?: number;
  /** Header version 1 (no timestamp: the disk size sits at 84) or 2 (default, disk size at 88). */
  version?: 1 | 2;
}

/** Returns the image bytes. */
export function buildBochs(build: BochsBuild): Uint8Array {
  const sectorsPerExtent = build.extentBytes / 512;
  const catalogEntries = build.catalogEntries ?? Math.ceil(build.diskBytes / build.extentBytes);
  const bitmapBytes = Math.ceil(sectorsPerExtent / 8);
  const bitmapSectors = Math.ceil(bitmapBytes / 512);
  const catalog = new Uint32Array(catalogEntries).fill(0xffffffff);
  const extentIndexes = [
    ...new Set([...build.sectors.keys()].map((s) => Math.floor(s / sectorsPerExtent))),
  ].sort((a, b) => a - b);
  extentIndexes.forEach((extent, i) => {
    catalog[extent] = i;
  });
  const dataOffset = 512 + catalogEntries * 4;
  const perExtent = (bitmapSectors + sectorsPerExtent) * 512;
  const image = new Uint8Array(dataOffset + extentIndexes.length * perExtent);
  const head = new DataView(image.buffer);
  image.set(Buffer.from('Bochs Virtual HD Image'), 0);
  image.set(Buffer.from('Redolog'), 32);
  image.set(Buffer.from('Growing'), 48);
  head.setUint32(64, build.version === 1 ? 0x00010000 : 0x00020000, true);
  head.setUint32(68, 512, true);
  head.setUint32(72, catalogEntries, true);
  head.setUint32(76, bitmapBytes, true);
  head.setUint32(80, build.extentBytes, true);
  head.setBigUint64(build.version === 1 ? 84 : 88, BigInt(build.diskBytes), true);
  catalog.forEach((entry, i) => {
    head.setUint32(512 + i * 4, entry, true);
  });
  for (const [sector, data] of build.sectors) {
    const extent = Math.floor(sector / sectorsPerExtent);
    const inExtent = sector % sectorsPerExtent;
    const base = dataOffset + catalog[extent]! * perExtent;
    const bitmapAt = base + (inExtent >> 3);
    image[bitmapAt] = (image[bitmapAt] ?? 0) | (1 << (inExtent & 7));
    image.set(data.subarray(0, 512), base + (bitmapSectors + inExtent) * 512);
  }
  return image;
}

export async function writeBochs(path: string, build: BochsBuild): Promise<void> {
  await writeFile(path, buildBochs(build));
}
