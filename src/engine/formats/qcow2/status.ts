// What an open qcow2 image says about itself: block status extents in qemu-img map's terms (data clusters
// with host offsets, zero clusters, compressed clusters without one, unallocated ranges) and info()
// with qemu-img info's format-specific keys. qcow2.txt "Cluster mapping", qemu's qcow2_get_specific_info.

import { dirname, isAbsolute, resolve } from 'node:path';
import type { Extent, ImageInfo } from '../../block-device.ts';
import { bitmapFlagNames } from './bitmaps.ts';
import {
  type L2Mapping,
  l1Offset,
  OFLAG_COMPRESSED_HIGH,
  OFLAG_ZERO_LOW,
  splitSubclusters,
} from './cluster-map.ts';
import { compressionTypeName } from './compress.ts';
import { dataFileName, isDataFileRaw } from './data-file.ts';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2 } from './header.ts';
import type { Qcow2Image } from './image.ts';
import { readSnapshotTable, toSnapshotInfo } from './snapshot.ts';

/** Most guest clusters one blockStatus call describes (callers loop). */
const BLOCK_STATUS_MAX_CLUSTERS = 1 << 20;

function extentFor(
  image: Qcow2Image,
  backingSizeBytes: number | undefined,
  mapping: L2Mapping,
  offsetBytes: number,
  lengthBytes: number,
  inClusterBytes: number,
): Extent {
  switch (mapping.kind) {
    case 'normal':
      return {
        offsetBytes,
        lengthBytes,
        allocated: true,
        zero: false,
        data: true,
        hostOffsetBytes: mapping.hostOffsetBytes + inClusterBytes,
        hostFile: image.dataFile?.path ?? image.path,
      };
    case 'zero-alloc':
      // qemu-img map shows the preallocated host cluster of a zero cluster too.
      return {
        offsetBytes,
        lengthBytes,
        allocated: true,
        zero: true,
        data: false,
        hostOffsetBytes: mapping.hostOffsetBytes + inClusterBytes,
        hostFile: image.dataFile?.path ?? image.path,
      };
    case 'zero-plain':
      return { offsetBytes, lengthBytes, allocated: true, zero: true, data: false };
    case 'compressed':
      return { offsetBytes, lengthBytes, allocated: true, zero: false, data: true, compressed: true };
    default: {
      const readsZero = backingSizeBytes === undefined || offsetBytes >= backingSizeBytes;
      const extent: Extent = { offsetBytes, lengthBytes, allocated: false, zero: readsZero, data: false };
      // Unallocated subclusters of an allocated cluster (extended L2): qemu-img map still prints the host offset.
      if (mapping.hostOffsetBytes !== 0) {
        extent.hostOffsetBytes = mapping.hostOffsetBytes + inClusterBytes;
        extent.hostFile = image.path;
      }
      return extent;
    }
  }
}

function canMerge(previous: Extent, next: Extent): boolean {
  if (previous.allocated !== next.allocated || previous.zero !== next.zero || previous.data !== next.data)
    return false;
  if (previous.compressed !== next.compressed) return false;
  if (previous.hostOffsetBytes === undefined && next.hostOffsetBytes === undefined) return true;
  return (
    previous.hostOffsetBytes !== undefined &&
    next.hostOffsetBytes === previous.hostOffsetBytes + previous.lengthBytes
  );
}

/**
 * Whether standard (8-byte) L2 entry `l2Index` of `table`, mapping the guest bytes at `runOffsetBytes`
 * (`inClusterBytes` into their cluster), continues `previous`: the extent extentFor() would give it
 * merges with `previous` under canMerge(). Reads the entry's two words and builds no objects; false
 * for anything else (another kind, a compressed entry, an offset decodeChecked() would refuse), which
 * the caller decodes in full. Long runs are most of a map, so this is most of block status's work.
 */
function continuesRun(
  image: Qcow2Image,
  backingSizeBytes: number | undefined,
  table: Buffer,
  l2Index: number,
  previous: Extent,
  runOffsetBytes: number,
  inClusterBytes: number,
): boolean {
  if (previous.compressed) return false;
  if ((table.readUInt32BE(l2Index * 8) & OFLAG_COMPRESSED_HIGH) !== 0) return false;
  const isZero = (table.readUInt32BE(l2Index * 8 + 4) & OFLAG_ZERO_LOW) !== 0;
  // Standard L2 entries keep the host offset in the same bits (9..55) as L1 entries.
  const hostOffsetBytes = l1Offset(table, l2Index);
  if (hostOffsetBytes === 0) {
    if (previous.hostOffsetBytes !== undefined || previous.data) return false;
    // zero-plain: allocated zeros.
    if (isZero) return previous.allocated && previous.zero;
    // unallocated: zeros unless the backing file lies under it.
    const readsZero = backingSizeBytes === undefined || runOffsetBytes >= backingSizeBytes;
    return !previous.allocated && previous.zero === readsZero;
  }
  const clusterSizeBytes = image.clusterSizeBytes;
  if (
    hostOffsetBytes % clusterSizeBytes !== 0 ||
    hostOffsetBytes > Number.MAX_SAFE_INTEGER - 4 * clusterSizeBytes
  )
    return false;
  // normal (data) or zero-alloc (zeros keeping a host cluster): the host bytes must follow on.
  return (
    previous.allocated &&
    previous.zero === isZero &&
    previous.data === !isZero &&
    previous.hostOffsetBytes !== undefined &&
    previous.hostOffsetBytes + previous.lengthBytes === hostOffsetBytes + inClusterBytes
  );
}

/**
 * Extents of [offsetBytes, offsetBytes + lengthBytes), merged where kind and host contiguity allow; stops early
 * after BLOCK_STATUS_MAX_CLUSTERS clusters. `backingSizeBytes` is undefined when the image has no backing device.
 */
export async function collectExtents(
  image: Qcow2Image,
  backingSizeBytes: number | undefined,
  offsetBytes: number,
  lengthBytes: number,
): Promise<Extent[]> {
  const extents: Extent[] = [];
  const clusterSizeBytes = image.clusterSizeBytes;
  const end = offsetBytes + lengthBytes;
  let position = offsetBytes;
  let clustersSeen = 0;
  // Clusters that continue the last extent are checked in place (continuesRun); extended L2 entries
  // and external data files always take the full decode.
  const canContinue = !image.extendedL2 && !image.hasDataFile;
  while (position < end && clustersSeen < BLOCK_STATUS_MAX_CLUSTERS) {
    const guestCluster = Math.floor(position / clusterSizeBytes);
    const previous = extents[extents.length - 1];
    if (canContinue && previous) {
      const l1Index = Math.floor(guestCluster / image.l2EntryCount);
      const l2OffsetBytes = l1Index < image.l1EntryCount ? l1Offset(image.l1, l1Index) : 0;
      // A table in the cache had its offset checked when lookup() loaded it.
      const table = l2OffsetBytes === 0 ? undefined : image.l2Cache.peek(l2OffsetBytes);
      const inClusterBytes = position - guestCluster * clusterSizeBytes;
      if (
        table &&
        continuesRun(
          image,
          backingSizeBytes,
          table,
          guestCluster % image.l2EntryCount,
          previous,
          position,
          inClusterBytes,
        )
      ) {
        const pieceEnd = Math.min(end, (guestCluster + 1) * clusterSizeBytes);
        previous.lengthBytes += pieceEnd - position;
        clustersSeen++;
        position = pieceEnd;
        continue;
      }
    }
    const { mapping, l2OffsetBytes } = image.lookupCached(guestCluster) ?? (await image.lookup(guestCluster));
    // Without an L2 table the whole range it would map is unallocated: skip it in one step.
    const clusterCount = l2OffsetBytes === 0 ? image.clustersLeftInL2(guestCluster) : 1;
    let pieceEnd = Math.min(end, (guestCluster + clusterCount) * clusterSizeBytes);
    // Unallocated reads as zeros only from the first cluster past the backing file's end (as
    // extentFor says of single clusters): a skip over a missing L2 table stops there.
    const backingEndCluster =
      backingSizeBytes === undefined ? undefined : Math.ceil(backingSizeBytes / clusterSizeBytes);
    if (backingEndCluster !== undefined && guestCluster < backingEndCluster)
      pieceEnd = Math.min(pieceEnd, backingEndCluster * clusterSizeBytes);
    clustersSeen += clusterCount;
    const inClusterBytes = position - guestCluster * clusterSizeBytes;
    const runs =
      mapping.subclusterAllocated !== undefined && mapping.kind !== 'compressed'
        ? splitSubclusters(mapping, image.clusterBits, inClusterBytes, pieceEnd - position)
        : [{ inClusterBytes, lengthBytes: pieceEnd - position, mapping }];
    for (const run of runs) {
      const runOffsetBytes = guestCluster * clusterSizeBytes + run.inClusterBytes;
      const extent = extentFor(
        image,
        backingSizeBytes,
        run.mapping,
        runOffsetBytes,
        run.lengthBytes,
        run.inClusterBytes,
      );
      const previous = extents[extents.length - 1];
      if (previous && canMerge(previous, extent)) previous.lengthBytes += extent.lengthBytes;
      else extents.push(extent);
    }
    position = pieceEnd;
  }
  return extents;
}

/** info(): sizes, dirty flag, backing names, and qemu's format-specific data in qemu's key order. */
export async function describeImage(image: Qcow2Image): Promise<ImageInfo> {
  const header = image.header;
  const data: Record<string, unknown> = {
    compat: header.version === 3 ? '1.1' : '0.10',
    'compression-type': compressionTypeName(header.compressionType) ?? String(header.compressionType),
  };
  if (header.version === 3)
    data['lazy-refcounts'] = (header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  if (image.bitmaps)
    data.bitmaps = image.bitmaps.entries.map((entry) => ({
      flags: bitmapFlagNames(entry.flags),
      name: entry.name,
      granularity: 2 ** entry.granularityBits,
    }));
  data['refcount-bits'] = 2 ** header.refcountOrder;
  if (image.hasDataFile) {
    data['data-file'] = dataFileName(header);
    data['data-file-raw'] = isDataFileRaw(header);
  }
  if (header.version === 3) {
    data.corrupt = (header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
    data['extended-l2'] = (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  }
  const info: ImageInfo = {
    format: 'qcow2',
    filename: image.path,
    virtualSizeBytes: header.virtualSizeBytes,
    clusterSizeBytes: image.clusterSizeBytes,
    dirty: (header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
    formatSpecific: { type: 'qcow2', data },
  };
  if (header.snapshotCount > 0) info.snapshots = (await readSnapshotTable(image)).map(toSnapshotInfo);
  const file = image.file as { allocatedBytes?: () => Promise<number> };
  if (typeof file.allocatedBytes === 'function')
    info.actualSizeBytes = await file.allocatedBytes.call(image.file);
  if (header.backingFileName !== undefined) {
    info.backingFilename = header.backingFileName;
    info.fullBackingFilename = isAbsolute(header.backingFileName)
      ? header.backingFileName
      : resolve(dirname(image.path), header.backingFileName);
    if (header.backingFormat) info.backingFormat = header.backingFormat;
  }
  return info;
}
