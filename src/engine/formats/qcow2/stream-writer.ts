// Writing a qcow2 image to a forward-only sink (stdout, a pipe): nothing can be sought back to, so the
// whole layout is decided first from one pass over the source (block status, then zero detection of
// the clusters it calls data), and the file is emitted in increasing offset order: header, refcount
// table, refcount blocks, L1, L2 tables, data clusters in guest order. Spec: qcow2.txt "Header",
// "Host cluster management", "Cluster mapping". Memory: one bit per guest cluster plus two chunks.

import type { BlockDevice } from '../../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { ByteSink } from '../../io/byte-stream.ts';
import type { StreamWriteRequest, StreamWriteResult } from '../driver.ts';
import { ALL_SUBCLUSTERS, writeEntry, writeExtendedEntry } from './cluster-map.ts';
import { initialHeader } from './create.ts';
import { serializeHeader } from './header.ts';
import { parseCreateSettings } from './options.ts';
import { writeRefcountEntry } from './refcount.ts';

/** Source reads and sink writes are made in runs of at most this many bytes. */
const CHUNK_BYTES = 2 * 1024 * 1024;

/** One bit per guest cluster: set when the cluster is stored as data. */
class ClusterBits {
  readonly bits: Uint8Array;
  constructor(clusterCount: number) {
    this.bits = new Uint8Array(Math.ceil(clusterCount / 8));
  }
  has(index: number): boolean {
    return ((this.bits[index >>> 3] ?? 0) & (1 << (index & 7))) !== 0;
  }
  set(index: number, value: boolean): void {
    const byte = this.bits[index >>> 3] ?? 0;
    this.bits[index >>> 3] = value ? byte | (1 << (index & 7)) : byte & ~(1 << (index & 7));
  }
}

export interface StreamLayout {
  clusterSizeBytes: number;
  refcountTableClusters: number;
  refcountBlockCount: number;
  l1EntryCount: number;
  l1Clusters: number;
  l2TableCount: number;
  dataClusters: number;
  /** Every cluster of the file: header + tables + data (each has refcount 1). */
  totalClusters: number;
}

/**
 * The layout of a metadata-first image: the refcount blocks must cover every cluster, themselves and
 * the refcount table included, so their count is found by iterating to a fixed point.
 */
export function planStreamLayout(
  clusterBits: number,
  refcountOrder: number,
  l1EntryCount: number,
  l2TableCount: number,
  dataClusters: number,
): StreamLayout {
  const clusterSizeBytes = 2 ** clusterBits;
  const entriesPerBlock = (clusterSizeBytes * 8) / 2 ** refcountOrder;
  const l1Clusters = Math.ceil((l1EntryCount * 8) / clusterSizeBytes);
  const fixedClusters = 1 + l1Clusters + l2TableCount + dataClusters;
  let refcountBlockCount = 1;
  let refcountTableClusters = 1;
  for (;;) {
    const total = fixedClusters + refcountBlockCount + refcountTableClusters;
    const blocks = Math.ceil(total / entriesPerBlock);
    const tableClusters = Math.ceil((blocks * 8) / clusterSizeBytes);
    if (blocks === refcountBlockCount && tableClusters === refcountTableClusters) break;
    refcountBlockCount = Math.max(refcountBlockCount, blocks);
    refcountTableClusters = Math.max(refcountTableClusters, tableClusters);
  }
  return {
    clusterSizeBytes,
    refcountTableClusters,
    refcountBlockCount,
    l1EntryCount,
    l1Clusters,
    l2TableCount,
    dataClusters,
    totalClusters: fixedClusters + refcountBlockCount + refcountTableClusters,
  };
}

/** Options the streaming writer cannot honour, with the reason given to the user. */
function refuseOptions(options: Record<string, string>): void {
  for (const key of ['backing_file', 'backing_fmt', 'data_file', 'data_file_raw'] as const) {
    if (options[key] !== undefined)
      throw new UnsupportedError({
        format: 'qcow2',
        feature: `streamed ${key}`,
        message: `${key} cannot be set on a qcow2 image written to a stream (convert to a file instead)`,
      });
  }
  const encryptKey = Object.keys(options).find((key) => key === 'encryption' || key.startsWith('encrypt.'));
  if (encryptKey !== undefined)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'streamed encryption',
      message: `${encryptKey} cannot be set on a qcow2 image written to a stream (convert to a file instead)`,
    });
  if (options.preallocation !== undefined && options.preallocation !== 'off')
    throw new InvalidOptionError({
      option: 'preallocation',
      value: options.preallocation,
      message: 'a qcow2 image written to a stream is not preallocated (preallocation=off only)',
    });
}

/** Calls `visit` for each run of `device` in [offset, end) that may not read as zeros, down its backing chain. */
async function forEachNonZeroRun(
  device: BlockDevice,
  offsetBytes: number,
  endBytes: number,
  visit: (offsetBytes: number, lengthBytes: number) => void,
): Promise<void> {
  let position = offsetBytes;
  while (position < endBytes) {
    const extents = await device.blockStatus(position, endBytes - position);
    if (extents.length === 0) {
      // A device that stops answering: treat the rest as data so nothing is lost.
      visit(position, endBytes - position);
      return;
    }
    const before = position;
    for (const extent of extents) {
      const start = Math.max(position, extent.offsetBytes);
      const end = Math.min(endBytes, extent.offsetBytes + extent.lengthBytes);
      if (end <= start) continue;
      if (extent.allocated || !device.backing) {
        if (!extent.zero) visit(start, end - start);
      } else if (start < device.backing.sizeBytes) {
        await forEachNonZeroRun(device.backing, start, Math.min(end, device.backing.sizeBytes), visit);
      }
      position = end;
    }
    if (position === before) {
      visit(position, endBytes - position);
      return;
    }
  }
}

/** Marks which guest clusters hold data: block status first, then the data ranges are read to drop zero clusters. */
async function findDataClusters(
  source: BlockDevice,
  clusterSizeBytes: number,
  guestClusters: number,
  detectZeros: boolean,
): Promise<ClusterBits> {
  const bits = new ClusterBits(guestClusters);
  await forEachNonZeroRun(source, 0, source.sizeBytes, (offsetBytes, lengthBytes) => {
    const first = Math.floor(offsetBytes / clusterSizeBytes);
    const last = Math.ceil((offsetBytes + lengthBytes) / clusterSizeBytes);
    for (let index = first; index < last; index++) bits.set(index, true);
  });
  if (!detectZeros) return bits;
  const buffer = Buffer.alloc(Math.max(clusterSizeBytes, CHUNK_BYTES - (CHUNK_BYTES % clusterSizeBytes)));
  const zeros = Buffer.alloc(clusterSizeBytes);
  const clustersPerChunk = buffer.length / clusterSizeBytes;
  for (let index = 0; index < guestClusters; ) {
    if (!bits.has(index)) {
      index++;
      continue;
    }
    let count = 1;
    while (count < clustersPerChunk && index + count < guestClusters && bits.has(index + count)) count++;
    const offsetBytes = index * clusterSizeBytes;
    const lengthBytes = Math.min(count * clusterSizeBytes, source.sizeBytes - offsetBytes);
    buffer.fill(0, lengthBytes);
    await source.read(offsetBytes, buffer.subarray(0, lengthBytes));
    for (let at = 0; at < count; at++) {
      const start = at * clusterSizeBytes;
      if (buffer.compare(zeros, 0, clusterSizeBytes, start, start + clusterSizeBytes) === 0)
        bits.set(index + at, false);
    }
    index += count;
  }
  return bits;
}

/**
 * Writes `source` as a qcow2 image to `sink`, in file order. Throws InvalidOptionError / UnsupportedError
 * for options a stream cannot carry (backing file, preallocation), ImageIoError when the sink fails.
 */
export async function writeQcow2Stream(
  source: BlockDevice,
  sink: ByteSink,
  request: StreamWriteRequest,
): Promise<StreamWriteResult> {
  refuseOptions(request.options);
  const settings = parseCreateSettings(source.sizeBytes, request.options);
  const clusterSizeBytes = 2 ** settings.clusterBits;
  const virtualSizeBytes = settings.sizeBytes;
  const entryBytes = settings.extendedL2 ? 16 : 8;
  const l2EntryCount = clusterSizeBytes / entryBytes;
  const guestClusters = Math.ceil(virtualSizeBytes / clusterSizeBytes);
  const l1EntryCount = Math.ceil(guestClusters / l2EntryCount);
  const dataBits = await findDataClusters(
    source,
    clusterSizeBytes,
    guestClusters,
    request.minSparseBytes > 0,
  );

  let dataClusters = 0;
  let l2TableCount = 0;
  for (let l1Index = 0; l1Index < l1EntryCount; l1Index++) {
    let inTable = 0;
    const end = Math.min(guestClusters, (l1Index + 1) * l2EntryCount);
    for (let index = l1Index * l2EntryCount; index < end; index++) if (dataBits.has(index)) inTable++;
    dataClusters += inTable;
    if (inTable > 0) l2TableCount++;
  }
  const layout = planStreamLayout(
    settings.clusterBits,
    settings.refcountOrder,
    l1EntryCount,
    l2TableCount,
    dataClusters,
  );
  const refcountTableOffset = clusterSizeBytes;
  const refcountBlocksOffset = refcountTableOffset + layout.refcountTableClusters * clusterSizeBytes;
  const l1Offset = refcountBlocksOffset + layout.refcountBlockCount * clusterSizeBytes;
  const l2Offset = l1Offset + layout.l1Clusters * clusterSizeBytes;
  const dataOffset = l2Offset + l2TableCount * clusterSizeBytes;

  const header = initialHeader({ ...settings, backingFile: undefined, backingFormat: undefined });
  header.l1EntryCount = l1EntryCount;
  header.l1TableOffsetBytes = l1EntryCount > 0 ? l1Offset : 0;
  header.refcountTableOffsetBytes = refcountTableOffset;
  header.refcountTableClusters = layout.refcountTableClusters;
  await sink.write(serializeHeader(header, sink.name));

  // Refcount table: entry k names refcount block k.
  const tableBytes = Buffer.alloc(layout.refcountTableClusters * clusterSizeBytes);
  for (let block = 0; block < layout.refcountBlockCount; block++)
    tableBytes.writeBigUInt64BE(BigInt(refcountBlocksOffset + block * clusterSizeBytes), block * 8);
  await sink.write(tableBytes);

  // Refcount blocks: every cluster of the file is used exactly once.
  const entriesPerBlock = (clusterSizeBytes * 8) / 2 ** settings.refcountOrder;
  for (let block = 0; block < layout.refcountBlockCount; block++) {
    const blockBytes = Buffer.alloc(clusterSizeBytes);
    const used = Math.min(entriesPerBlock, layout.totalClusters - block * entriesPerBlock);
    for (let index = 0; index < used; index++)
      writeRefcountEntry(blockBytes, index, settings.refcountOrder, 1);
    await sink.write(blockBytes);
  }

  // L1: tables in L1 order, right after it.
  const l1Bytes = Buffer.alloc(layout.l1Clusters * clusterSizeBytes);
  let nextTable = 0;
  for (let l1Index = 0; l1Index < l1EntryCount; l1Index++) {
    const end = Math.min(guestClusters, (l1Index + 1) * l2EntryCount);
    let used = false;
    for (let index = l1Index * l2EntryCount; index < end && !used; index++) used = dataBits.has(index);
    if (!used) continue;
    writeEntry(l1Bytes, l1Index, l2Offset + nextTable * clusterSizeBytes, true);
    nextTable++;
  }
  await sink.write(l1Bytes);

  // L2 tables: the k-th data cluster in guest order sits at dataOffset + k clusters.
  let rank = 0;
  for (let l1Index = 0; l1Index < l1EntryCount; l1Index++) {
    const first = l1Index * l2EntryCount;
    const end = Math.min(guestClusters, first + l2EntryCount);
    const table = Buffer.alloc(clusterSizeBytes);
    let used = false;
    for (let index = first; index < end; index++) {
      if (!dataBits.has(index)) continue;
      used = true;
      const hostOffsetBytes = dataOffset + rank * clusterSizeBytes;
      if (settings.extendedL2)
        writeExtendedEntry(table, index - first, hostOffsetBytes, true, ALL_SUBCLUSTERS, 0);
      else writeEntry(table, index - first, hostOffsetBytes, true);
      rank++;
    }
    if (used) await sink.write(table);
  }

  // Data, in guest order, read one run ahead of the write so source and sink overlap.
  const runs = dataRuns(dataBits, guestClusters, Math.max(1, Math.floor(CHUNK_BYTES / clusterSizeBytes)));
  const readRun = async (run: { first: number; count: number }): Promise<Buffer> => {
    const buffer = Buffer.alloc(run.count * clusterSizeBytes);
    const offsetBytes = run.first * clusterSizeBytes;
    const lengthBytes = Math.min(buffer.length, source.sizeBytes - offsetBytes);
    if (lengthBytes > 0) await source.read(offsetBytes, buffer.subarray(0, lengthBytes));
    return buffer;
  };
  let doneBytes = 0;
  const totalBytes = dataClusters * clusterSizeBytes;
  let step = runs.next();
  let pending = step.done ? undefined : readRun(step.value);
  while (pending) {
    const buffer = await pending;
    step = runs.next();
    pending = step.done ? undefined : readRun(step.value);
    // Keep the read ahead from rejecting unobserved while the sink write waits.
    pending?.catch(() => undefined);
    await sink.write(buffer);
    doneBytes += buffer.length;
    request.onProgress?.(doneBytes, totalBytes);
  }
  return { imageBytes: layout.totalClusters * clusterSizeBytes, dataBytes: totalBytes };
}

/** Runs of consecutive data clusters, at most `maxClusters` long, in guest order. */
function* dataRuns(
  bits: ClusterBits,
  guestClusters: number,
  maxClusters: number,
): Generator<{ first: number; count: number }> {
  for (let index = 0; index < guestClusters; ) {
    if (!bits.has(index)) {
      index++;
      continue;
    }
    let count = 1;
    while (count < maxClusters && index + count < guestClusters && bits.has(index + count)) count++;
    yield { first: index, count };
    index += count;
  }
}
