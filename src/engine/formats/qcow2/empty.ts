// Emptying an open qcow2 image (qemu's bdrv_make_empty, qcow2_make_empty): every L2 entry of the active
// table becomes unallocated, so reads fall through to the backing file again, as after `qemu-img commit`.
// Entries are cleared before their clusters are released, and releases happen at the flush after the
// L2 tables are on disk, so a crash leaks clusters and never leaves an entry naming a freed one.

import type { Qcow2Image } from './image.ts';

/** Unmaps every guest cluster of the active L1/L2 tables (snapshots keep theirs) and flushes. */
export async function makeQcow2Empty(image: Qcow2Image): Promise<void> {
  const clusterCount = Math.ceil(image.header.virtualSizeBytes / image.clusterSizeBytes);
  for (let guestCluster = 0; guestCluster < clusterCount; ) {
    const { mapping, l2OffsetBytes } = await image.lookup(guestCluster);
    if (l2OffsetBytes === 0) {
      guestCluster += image.clustersLeftInL2(guestCluster);
      continue;
    }
    const hasSubclusterBits = (mapping.subclusterAllocated ?? 0) !== 0 || (mapping.subclusterZero ?? 0) !== 0;
    if (mapping.kind !== 'unallocated' || hasSubclusterBits) {
      // A table shared with a snapshot is copied first; the copy is what gets cleared.
      const writableOffsetBytes = await image.writableL2(guestCluster);
      await image.setL2Entry(
        writableOffsetBytes,
        guestCluster % image.l2EntryCount,
        image.entryUnallocated(),
      );
      image.releaseMapping(mapping);
    }
    guestCluster += 1;
  }
  await image.flush();
}
