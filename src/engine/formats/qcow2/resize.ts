// Growing and shrinking a qcow2 image's guest size (qemu's qcow2_co_truncate): a bigger L1 table is
// written elsewhere before the header points at it; shrinking drops clusters past the new end, frees L2
// tables no longer needed and trims the file. qcow2.txt "Header" (size, l1_size, l1_table_offset).

import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { clearEntry, decodeL2, l1Offset } from './cluster-map.ts';
import { HEADER_FIELD, QCOW2_MAX_L1_BYTES } from './header.ts';
import type { Qcow2Image } from './image.ts';

/** L1 entries needed to map `sizeBytes`. */
function l1EntriesFor(image: Qcow2Image, sizeBytes: number): number {
  return Math.ceil(sizeBytes / (image.clusterSizeBytes * image.l2EntryCount));
}

async function writeSize(image: Qcow2Image, sizeBytes: number): Promise<void> {
  await image.writeHeaderField(HEADER_FIELD.size, BigInt(sizeBytes));
  await image.file.sync();
  image.header.virtualSizeBytes = sizeBytes;
}

/** Grows the guest size; moves the L1 table to a bigger one when it no longer covers the size. */
export async function growImage(image: Qcow2Image, sizeBytes: number): Promise<void> {
  const neededEntries = l1EntriesFor(image, sizeBytes);
  if (neededEntries * 8 > QCOW2_MAX_L1_BYTES) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: `${image.path}: Could not resize image: Image size is too big for this cluster size`,
    });
  }
  if (neededEntries > image.l1EntryCount) {
    await image.flush();
    const clusterSizeBytes = image.clusterSizeBytes;
    const newL1 = Buffer.alloc(neededEntries * 8);
    image.l1.copy(newL1);
    const first = await image.refcounts.allocateClusters(Math.ceil(newL1.length / clusterSizeBytes));
    await image.refcounts.flush();
    await image.file.write(first * clusterSizeBytes, newL1);
    await image.file.sync();
    const oldOffsetBytes = image.header.l1TableOffsetBytes;
    const oldClusters = Math.ceil(image.l1.length / clusterSizeBytes);
    // l1_size and l1_table_offset are adjacent: one write switches tables.
    const fields = Buffer.alloc(12);
    fields.writeUInt32BE(neededEntries, 0);
    fields.writeBigUInt64BE(BigInt(first * clusterSizeBytes), 4);
    await image.file.write(HEADER_FIELD.l1Size, fields);
    await image.file.sync();
    image.replaceL1(newL1, first * clusterSizeBytes);
    if (oldClusters > 0) await image.refcounts.free(oldOffsetBytes / clusterSizeBytes, oldClusters);
    await image.refcounts.flush();
  }
  await writeSize(image, sizeBytes);
}

/**
 * Shrinks the guest size. Refuses (InvalidOptionError) when data lies past the new end unless `allowDataLoss`,
 * and (UnsupportedError) with internal snapshots, as qemu does.
 */
export async function shrinkImage(
  image: Qcow2Image,
  sizeBytes: number,
  allowDataLoss: boolean,
): Promise<void> {
  if (image.header.snapshotCount > 0)
    throw new UnsupportedError({ format: 'qcow2', feature: 'shrinking an image with internal snapshots' });
  const clusterSizeBytes = image.clusterSizeBytes;
  const firstDroppedCluster = Math.ceil(sizeBytes / clusterSizeBytes);
  const oldClusters = Math.ceil(image.header.virtualSizeBytes / clusterSizeBytes);
  const dropped: Array<{ l2OffsetBytes: number; l2Index: number }> = [];
  for (let guestCluster = firstDroppedCluster; guestCluster < oldClusters; guestCluster++) {
    const { mapping, l2OffsetBytes, l2Index } = await image.lookup(guestCluster);
    if (l2OffsetBytes === 0) {
      guestCluster += image.clustersLeftInL2(guestCluster) - 1;
      continue;
    }
    if (mapping.kind === 'unallocated') continue;
    if (!allowDataLoss && mapping.kind !== 'zero-plain') {
      throw new InvalidOptionError({
        option: 'size',
        value: sizeBytes,
        message: `${image.path}: shrinking to ${sizeBytes} bytes would discard data at guest offset ${guestCluster * clusterSizeBytes}`,
      });
    }
    dropped.push({ l2OffsetBytes, l2Index });
  }
  await writeSize(image, sizeBytes);
  for (const { l2OffsetBytes, l2Index } of dropped) {
    const table = await image.l2Cache.get(l2OffsetBytes);
    image.releaseMapping(decodeL2(table, l2Index, image.clusterBits, image.extendedL2));
    await image.setL2Entry(l2OffsetBytes, l2Index, image.entryUnallocated());
  }
  // L2 tables wholly past the new end: unhook them from L1, then free them once L1 is on disk.
  const keepEntries = l1EntriesFor(image, sizeBytes);
  await image.flush();
  const freedTables: number[] = [];
  for (let l1Index = keepEntries; l1Index < image.l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(image.l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    clearEntry(image.l1, l1Index);
    freedTables.push(l2OffsetBytes);
  }
  if (freedTables.length > 0) {
    await image.file.write(image.header.l1TableOffsetBytes, image.l1);
    await image.file.sync();
    for (const l2OffsetBytes of freedTables) {
      image.l2Cache.drop(l2OffsetBytes);
      await image.refcounts.free(l2OffsetBytes / clusterSizeBytes, 1);
    }
    await image.refcounts.flush();
    await image.file.sync();
  }
  // Trim the file after the last cluster still in use, as qemu does.
  const usedEnd = (await image.refcounts.usedClusterEnd()) * clusterSizeBytes;
  if (usedEnd > 0 && usedEnd < (await image.file.sizeBytes())) await image.file.truncate(usedEnd);
}
