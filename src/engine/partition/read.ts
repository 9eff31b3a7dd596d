// Which table a disk carries: a GPT behind a protective (or hybrid) MBR, a plain MBR, a GPT with no
// MBR in front, or none. This is the order Linux's block/partitions/check.c tries them in
// (efi before msdos), so vdisk, kpartx and the kernel agree on what a disk holds.

import { readGpt } from './gpt.ts';
import { hasProtectiveEntry, looksLikeMbr, readMbr } from './mbr.ts';
import { type PartitionIo, type PartitionTable, readSectors, SECTOR_BYTES } from './types.ts';

/**
 * Reads the partition table of a device (any opened image). Undefined when there is none.
 * Throws CorruptImageError when a table is present but unusable, ImageIoError from the device.
 */
export async function readPartitionTable(io: PartitionIo, file: string): Promise<PartitionTable | undefined> {
  if (io.sizeBytes < SECTOR_BYTES) return undefined;
  const sector0 = await readSectors(io, 0, 1);
  if (hasProtectiveEntry(sector0)) {
    const gpt = await readGpt(io, file);
    if (gpt) return gpt;
  }
  if (looksLikeMbr(sector0)) return readMbr(io, file);
  return readGpt(io, file);
}
