// Growing a VHD in place (beyond qemu 7.2, which cannot resize vpc): the new size follows the image's
// sizing rule (CHS-rounded, or exact for current_size creators); fixed disks move their footer, dynamic
// disks extend the BAT, first relocating any data block that sits where the larger BAT must go.

import { UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import {
  buildFooter,
  calculateGeometry,
  guestSizeBytes,
  roundedCreateSize,
  usesCurrentSize,
  vpcChecksum,
  VPC_DYNAMIC_HEADER_BYTES,
  VPC_MAX_GEOMETRY_SECTORS,
  VPC_MAX_SECTORS,
  VPC_UNALLOCATED,
  type VpcDynamicHeader,
  type VpcFooter,
} from './footer.ts';

const SECTOR_BYTES = 512;
const COPY_CHUNK_BYTES = 1024 * 1024;

/** The mutable dynamic-disk state the driver keeps (shared with driver.ts). */
export interface DynamicState {
  header: VpcDynamicHeader;
  bat: Uint32Array;
  blockSizeBytes: number;
  bitmapSizeBytes: number;
  /** Where the next block goes; the footer copy sits here. */
  freeDataBlockOffsetBytes: number;
}

/** The footer fields for a new guest size, following the rule the image is sized by now. */
function resizedFooter(footer: VpcFooter, requestedBytes: number, path: string): VpcFooter {
  if (usesCurrentSize(footer)) {
    const totalBytes = Math.ceil(requestedBytes / SECTOR_BYTES) * SECTOR_BYTES;
    if (totalBytes / SECTOR_BYTES > VPC_MAX_SECTORS) {
      throw new UnsupportedError({ format: 'vpc', feature: 'sizes over 2040 GiB' });
    }
    const isMaxGeometry =
      footer.cylinders * footer.heads * footer.sectorsPerTrack === VPC_MAX_GEOMETRY_SECTORS;
    const geometry = isMaxGeometry ? footer : calculateGeometry(totalBytes / SECTOR_BYTES);
    return {
      ...footer,
      currentSizeBytes: totalBytes,
      cylinders: geometry.cylinders,
      heads: geometry.heads,
      sectorsPerTrack: geometry.sectorsPerTrack,
    };
  }
  const rounded = roundedCreateSize(requestedBytes, false, path);
  return {
    ...footer,
    currentSizeBytes: rounded.totalSectors * SECTOR_BYTES,
    cylinders: rounded.cylinders,
    heads: rounded.heads,
    sectorsPerTrack: rounded.sectorsPerTrack,
  };
}

/** Copies `lengthBytes` from `fromBytes` to `toBytes` in bounded chunks. */
async function copyRange(
  file: HostFile,
  fromBytes: number,
  toBytes: number,
  lengthBytes: number,
): Promise<void> {
  const chunk = Buffer.alloc(Math.min(COPY_CHUNK_BYTES, lengthBytes));
  for (let done = 0; done < lengthBytes; done += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, lengthBytes - done));
    const count = await file.read(fromBytes + done, part);
    part.fill(0, count);
    await file.write(toBytes + done, part);
  }
}

/**
 * Grows the image to at least `requestedBytes`; returns the new guest size and footer bytes.
 * Throws UnsupportedError for shrinking. Data blocks are copied before the BAT points at their new home.
 */
export async function growVpc(args: {
  file: HostFile;
  path: string;
  footer: VpcFooter;
  dynamic: DynamicState | undefined;
  currentSizeBytes: number;
  requestedBytes: number;
}): Promise<{ sizeBytes: number; footer: VpcFooter; footerBytes: Buffer }> {
  const { file, dynamic } = args;
  const footer = resizedFooter(args.footer, args.requestedBytes, args.path);
  const sizeBytes = guestSizeBytes(footer);
  if (sizeBytes < args.currentSizeBytes) throw new UnsupportedError({ format: 'vpc', feature: 'shrinking' });
  const footerBytes = buildFooter(footer);
  if (!dynamic) {
    // Drop the old footer (it would become guest data), extend, and write the footer at the new end.
    await file.truncate(args.currentSizeBytes);
    await file.truncate(sizeBytes);
    await file.write(sizeBytes, footerBytes);
    await file.sync();
    return { sizeBytes, footer, footerBytes };
  }
  const entryCount = Math.ceil(sizeBytes / dynamic.blockSizeBytes);
  if (entryCount > dynamic.bat.length) {
    const tableOffsetBytes = dynamic.header.tableOffsetBytes;
    const batEndBytes = Math.ceil((tableOffsetBytes + entryCount * 4) / SECTOR_BYTES) * SECTOR_BYTES;
    const blockBytes = dynamic.bitmapSizeBytes + dynamic.blockSizeBytes;
    // Appended blocks must start past the larger BAT.
    dynamic.freeDataBlockOffsetBytes = Math.max(dynamic.freeDataBlockOffsetBytes, batEndBytes);
    for (let index = 0; index < dynamic.bat.length; index++) {
      const entry = dynamic.bat[index]!;
      if (entry === VPC_UNALLOCATED || entry * SECTOR_BYTES >= batEndBytes) continue;
      const newStartBytes = dynamic.freeDataBlockOffsetBytes;
      await copyRange(file, entry * SECTOR_BYTES, newStartBytes, blockBytes);
      dynamic.freeDataBlockOffsetBytes = newStartBytes + blockBytes;
      const bytes = Buffer.alloc(4);
      bytes.writeUInt32BE(newStartBytes / SECTOR_BYTES, 0);
      await file.sync();
      await file.write(tableOffsetBytes + index * 4, bytes);
      dynamic.bat[index] = newStartBytes / SECTOR_BYTES;
    }
    const grown = new Uint32Array(entryCount).fill(VPC_UNALLOCATED);
    grown.set(dynamic.bat);
    await file.write(
      tableOffsetBytes + dynamic.bat.length * 4,
      Buffer.alloc((entryCount - dynamic.bat.length) * 4, 0xff),
    );
    dynamic.bat = grown;
    const headerOffsetBytes = args.footer.dataOffsetBytes;
    const old = Buffer.alloc(VPC_DYNAMIC_HEADER_BYTES);
    await file.read(headerOffsetBytes, old);
    // Keep the parent fields (bytes 40..1024) of the old header; only max_table_entries changes.
    old.writeUInt32BE(entryCount, 28);
    old.writeUInt32BE(vpcChecksum(old, 36), 36);
    await file.write(headerOffsetBytes, old);
    dynamic.header = { ...dynamic.header, maxTableEntries: entryCount };
  }
  await file.truncate(dynamic.freeDataBlockOffsetBytes);
  await file.write(dynamic.freeDataBlockOffsetBytes, footerBytes);
  await file.write(0, footerBytes);
  await file.sync();
  return { sizeBytes, footer, footerBytes };
}
