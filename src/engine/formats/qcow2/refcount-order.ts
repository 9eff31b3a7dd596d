// Changing the refcount width of an existing qcow2 image (qemu-img amend -o refcount_bits=N, qemu's
// qcow2_change_refcount_order): every reference is counted by walking the metadata (as check does), a
// new refcount table and blocks of the new width are written past the end of the file, synced, and one
// header write switches to them; the old structures are then unreferenced free space. A crash before
// the header write leaves the old structures in charge. qcow2.txt "Refcount table", "refcount_order".

import { CorruptImageError, InvalidOptionError } from '../../errors.ts';
import { rewriteHeaderCluster } from './backing.ts';
import { walkImage } from './check.ts';
import type { Qcow2Image } from './image.ts';
import { maxRefcount, writeRefcountEntry } from './refcount.ts';

/**
 * Rewrites the image's refcounts with width 2^`refcountOrder` bits. The image object keeps its old
 * refcount state in memory, so the device must be closed (not written) afterwards; the amend command
 * does so. Throws InvalidOptionError when a refcount does not fit the new width, CorruptImageError when
 * the metadata walk finds corruption (nothing is written then).
 */
export async function changeRefcountOrder(image: Qcow2Image, refcountOrder: number): Promise<void> {
  if (refcountOrder === image.header.refcountOrder) return;
  await image.flush();
  const walk = await walkImage(image);
  if (walk.corruptions > 0 || walk.checkErrors > 0 || walk.beyondEnd.size > 0) {
    throw new CorruptImageError({
      file: image.path,
      message: `${image.path}: cannot change refcount_bits: the image has ${walk.corruptions + walk.checkErrors} errors (run check -r all)`,
    });
  }
  const clusterSizeBytes = image.clusterSizeBytes;
  const computed = walk.computed;
  // The old refcount structures are not carried over.
  const { offsetBytes: oldTableOffsetBytes, clusterCount: oldTableClusters } = image.refcounts.tableLocation;
  const release = (clusterIndex: number): void => {
    const refcount = computed[clusterIndex] ?? 0;
    if (refcount > 0) computed[clusterIndex] = refcount - 1;
  };
  for (let index = 0; index < oldTableClusters; index++)
    release(oldTableOffsetBytes / clusterSizeBytes + index);
  for (let tableIndex = 0; tableIndex < image.refcounts.tableEntryCount; tableIndex++) {
    const blockOffsetBytes = image.refcounts.blockOffset(tableIndex);
    if (blockOffsetBytes !== 0) release(blockOffsetBytes / clusterSizeBytes);
  }
  const limit = maxRefcount(refcountOrder);
  let usedClusters = 0;
  for (let clusterIndex = 0; clusterIndex < computed.length; clusterIndex++) {
    const refcount = computed[clusterIndex] ?? 0;
    if (refcount > limit)
      throw new InvalidOptionError({
        option: 'refcount_bits',
        value: 2 ** refcountOrder,
        message: `Cannot decrease refcount entry width to ${2 ** refcountOrder} bits: Cluster at offset 0x${(clusterIndex * clusterSizeBytes).toString(16)} has a refcount of ${refcount}`,
      });
    if (refcount > 0) usedClusters = clusterIndex + 1;
  }
  // New structures go after the end of the file: [table][blocks], sized to cover themselves too.
  const firstNew = Math.max(walk.fileClusters, usedClusters);
  const entriesPerBlock = (clusterSizeBytes * 8) / 2 ** refcountOrder;
  let tableClusters = 1;
  let blockCount = 1;
  for (;;) {
    const totalClusters = firstNew + tableClusters + blockCount;
    const neededBlocks = Math.ceil(totalClusters / entriesPerBlock);
    const neededTableClusters = Math.ceil((neededBlocks * 8) / clusterSizeBytes);
    if (neededBlocks === blockCount && neededTableClusters === tableClusters) break;
    blockCount = Math.max(blockCount, neededBlocks);
    tableClusters = Math.max(tableClusters, neededTableClusters);
  }
  const region = Buffer.alloc((tableClusters + blockCount) * clusterSizeBytes);
  const firstBlock = firstNew + tableClusters;
  for (let block = 0; block < blockCount; block++) {
    region.writeBigUInt64BE(BigInt((firstBlock + block) * clusterSizeBytes), block * 8);
  }
  const refcountOf = (clusterIndex: number): number =>
    clusterIndex >= firstNew && clusterIndex < firstNew + tableClusters + blockCount
      ? 1
      : (computed[clusterIndex] ?? 0);
  for (let clusterIndex = 0; clusterIndex < firstNew + tableClusters + blockCount; clusterIndex++) {
    const refcount = refcountOf(clusterIndex);
    if (refcount === 0) continue;
    const block = Math.floor(clusterIndex / entriesPerBlock);
    const blockView = region.subarray(
      (tableClusters + block) * clusterSizeBytes,
      (tableClusters + block + 1) * clusterSizeBytes,
    );
    writeRefcountEntry(blockView, clusterIndex % entriesPerBlock, refcountOrder, refcount);
  }
  await image.file.write(firstNew * clusterSizeBytes, region);
  await image.file.sync();
  await rewriteHeaderCluster(image, {
    ...image.header,
    refcountOrder,
    refcountTableOffsetBytes: firstNew * clusterSizeBytes,
    refcountTableClusters: tableClusters,
  });
}
