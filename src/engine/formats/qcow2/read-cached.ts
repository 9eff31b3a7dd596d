// qcow2's synchronous cached read (BlockDevice.readCached, the NBD server's fast path, issue 5): maps a
// guest range through L2 tables already in the table cache and copies the host runs the page cache
// holds, all in one turn. Implements the read side of qcow2.txt "Cluster mapping" for the simple cases.

import { ALL_SUBCLUSTERS, l1Offset } from './cluster-map.ts';
import type { Qcow2Image } from './image.ts';

/**
 * Fills a prefix of `buffer` with the guest bytes at `offsetBytes` without waiting for anything, and
 * returns its length (0..buffer.length); the caller reads the rest with the device's async read.
 * It stops at the first cluster it cannot serve from memory: an L2 table not in the cache, a compressed
 * cluster (inflating belongs on the thread pool), an unallocated cluster when a backing file lies under
 * it, subclusters that mix data with zeros, a corrupt entry (read() reports it), or host bytes the page
 * cache does not hold. Normal clusters are host bytes; zero clusters, and unallocated ones without
 * backing, are zeros. Encrypted images and external data files are the caller's to exclude.
 */
export function readCachedQcow2(
  image: Qcow2Image,
  hasBacking: boolean,
  offsetBytes: number,
  buffer: Uint8Array,
): number {
  const file = image.file;
  const clusterSizeBytes = image.clusterSizeBytes;
  const l2EntryCount = image.l2EntryCount;
  const lengthBytes = buffer.length;
  // Adjacent clusters stored one after another on the host are read with one call.
  let runBufferOffset = 0;
  let runHostOffset = 0;
  let runBytes = 0;
  /** Reads the pending host run; returns where the filled prefix ends if the run came back short. */
  const readRun = (): number | undefined => {
    if (runBytes === 0) return undefined;
    const target = buffer.subarray(runBufferOffset, runBufferOffset + runBytes);
    const count = file.readCached?.(runHostOffset, target) ?? 0;
    runBytes = 0;
    return count < target.length ? runBufferOffset + count : undefined;
  };
  let done = 0;
  let tableOffsetBytes = -1;
  let table: Buffer | undefined;
  // A request's clusters nearly always share one L1 entry: decode it once, not per cluster.
  let lastL1Index = -1;
  let l2Offset = 0;
  while (done < lengthBytes) {
    const guestOffsetBytes = offsetBytes + done;
    const guestCluster = Math.floor(guestOffsetBytes / clusterSizeBytes);
    const inClusterBytes = guestOffsetBytes - guestCluster * clusterSizeBytes;
    const pieceBytes = Math.min(clusterSizeBytes - inClusterBytes, lengthBytes - done);
    const l1Index = Math.floor(guestCluster / l2EntryCount);
    if (l1Index !== lastL1Index) {
      lastL1Index = l1Index;
      l2Offset = l1Index < image.l1EntryCount ? l1Offset(image.l1, l1Index) : 0;
    }
    let hostOffsetBytes = 0;
    if (l2Offset !== 0) {
      if (l2Offset !== tableOffsetBytes) {
        // Only a table the cache holds was ever offset-checked (lookup checks before loading).
        table = image.l2Cache.peek(l2Offset);
        tableOffsetBytes = l2Offset;
      }
      if (!table) return readRun() ?? done;
      let mapping: ReturnType<Qcow2Image['decodeChecked']>;
      try {
        mapping = image.decodeChecked(table, guestCluster % l2EntryCount, l2Offset);
      } catch {
        return readRun() ?? done;
      }
      if (mapping.kind === 'compressed') return readRun() ?? done;
      if (mapping.subclusterAllocated !== undefined) {
        // Extended L2: only a cluster whose subclusters are all data, or none is, is one piece.
        const allocated = mapping.hostOffsetBytes === 0 ? 0 : mapping.subclusterAllocated;
        if (allocated === ALL_SUBCLUSTERS) hostOffsetBytes = mapping.hostOffsetBytes;
        else if (allocated !== 0) return readRun() ?? done;
        else if (hasBacking && mapping.subclusterZero !== ALL_SUBCLUSTERS) return readRun() ?? done;
      } else if (mapping.kind === 'normal') hostOffsetBytes = mapping.hostOffsetBytes;
      else if (mapping.kind === 'unallocated' && hasBacking) return readRun() ?? done;
    } else if (hasBacking) return readRun() ?? done;
    if (hostOffsetBytes !== 0) {
      const host = hostOffsetBytes + inClusterBytes;
      // Contiguous on both sides: zeros or a skipped cluster between two host neighbours break the run.
      if (runBytes !== 0 && runHostOffset + runBytes === host && runBufferOffset + runBytes === done)
        runBytes += pieceBytes;
      else {
        const short = readRun();
        if (short !== undefined) return short;
        runBufferOffset = done;
        runHostOffset = host;
        runBytes = pieceBytes;
      }
    } else buffer.fill(0, done, done + pieceBytes);
    done += pieceBytes;
  }
  return readRun() ?? done;
}
