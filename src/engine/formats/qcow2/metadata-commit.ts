// One atomic change of a qcow2 image's metadata (internal snapshot create, delete, revert). The new active
// L1, every active L2 table whose bytes change, the snapshot table, the refcount blocks that change and a
// refcount table are written as copies in clusters the old state leaves free; one write of the header's
// first sector (l1_size .. snapshots_offset all lie in its first 72 bytes) switches to them. A crash
// before that write leaves the old image untouched, after it the new one with exact refcounts and COPIED
// flags. qcow2.txt "Header", "Host cluster management", "Cluster mapping".

import { CorruptImageError } from '../../errors.ts';
import {
  l1Offset,
  OFFSET_HIGH_MASK,
  OFFSET_LOW_MASK,
  OFLAG_COMPRESSED_HIGH,
  OFLAG_COPIED_HIGH,
  writeEntry,
} from './cluster-map.ts';
import { QCOW2_MAGIC, QCOW2_MAX_REFTABLE_BYTES } from './header.ts';
import type { Qcow2Image } from './image.ts';
import { readRefcountEntry } from './refcount.ts';
import type { RefcountShadow } from './refcount-shadow.ts';

export interface MetadataChange {
  /**
   * The refcounts after the operation: every reference it adds or drops (tree walks, a snapshot's L1,
   * the old active L1, the old snapshot table). The commit adds the clusters it writes and drops the
   * ones they replace.
   */
  refcounts: RefcountShadow;
  /** The new active L1 table (l1_size entries naming L2 tables); COPIED is set here, from the new refcounts. */
  l1: Buffer;
  /** The new snapshot table, serialized, and its entry count; undefined keeps the current one. */
  snapshotTable?: { bytes: Buffer; count: number };
}

/** L2 tables read ahead of a walk: a pread per table in turn left the walk idle. */
const READ_AHEAD_TABLES = 8;
/** Bytes of changed L2 tables kept between deciding to copy them and writing the copies (the L2 cache's default). */
const KEPT_COPIES_BYTES = 16 * 1024 * 1024;
/** Placement rounds before giving up (each grows the refcount blocks or table; two are the norm). */
const MAX_PLACEMENT_ROUNDS = 64;

/**
 * Reads the cluster-sized tables at `offsetAt(0 .. count - 1)` (0: none) in order, a few ahead of the
 * one asked for, each a private copy: the cached table when the L2 cache has it (it may be newer than
 * the file), else the file. For walks that read tables and may change their copy.
 */
export function tableReadAhead(
  image: Qcow2Image,
  count: number,
  offsetAt: (index: number) => number,
): (index: number) => Promise<Buffer> {
  const started = new Map<number, Promise<Buffer>>();
  const start = (index: number): void => {
    if (index >= count || started.has(index)) return;
    const offsetBytes = offsetAt(index);
    if (offsetBytes === 0 || offsetBytes % image.clusterSizeBytes !== 0) return;
    if (image.l2Cache.peekQuiet(offsetBytes)) return;
    const read = (async () => {
      const table = Buffer.alloc(image.clusterSizeBytes);
      await image.file.read(offsetBytes, table);
      return table;
    })();
    read.catch(() => undefined); // reported when awaited
    started.set(index, read);
  };
  return async (index) => {
    for (let ahead = 1; ahead <= READ_AHEAD_TABLES; ahead++) start(index + ahead);
    const offsetBytes = offsetAt(index);
    const pending = started.get(index);
    started.delete(index);
    const cached = image.l2Cache.peek(offsetBytes);
    if (cached) return Buffer.from(cached);
    return pending ?? Buffer.from(await image.l2Cache.get(offsetBytes));
  };
}

/**
 * Sets COPIED on every entry of an active L2 table that names a host cluster exactly where its new
 * refcount is 1 (always, for an external data file's clusters, which have none), as qemu defines it;
 * compressed, unallocated and plain zero entries keep theirs. Returns whether a byte changed.
 */
async function deriveCopiedFlags(image: Qcow2Image, shadow: RefcountShadow, table: Buffer): Promise<boolean> {
  const { clusterSizeBytes, clusterBits } = image;
  const entryBytes = image.extendedL2 ? 16 : 8;
  const tableBytes = image.l2EntryCount * entryBytes;
  const clustersPerHighUnit = 2 ** (32 - clusterBits);
  const inClusterMask = (clusterSizeBytes - 1) >>> 0;
  const { entriesPerBlock, refcountOrder } = image.refcounts;
  const view = new DataView(table.buffer, table.byteOffset, table.length);
  // The block in hand while the clusters stay inside it, DataView for 16-bit counts: the walk runs
  // once per command, mostly before V8 optimizes it.
  let blockFirst = 0;
  let blockEnd = 0;
  let block: Buffer | undefined;
  let blockView: DataView | undefined;
  let changed = false;
  for (let at = 0; at < tableBytes; at += entryBytes) {
    const high = view.getUint32(at);
    if (high & OFLAG_COMPRESSED_HIGH) continue;
    const offsetHigh = high & OFFSET_HIGH_MASK;
    const offsetLow = (view.getUint32(at + 4) & OFFSET_LOW_MASK) >>> 0;
    if ((offsetHigh === 0 && offsetLow === 0) || (offsetLow & inClusterMask) !== 0) continue;
    let exclusive = true;
    if (!image.hasDataFile) {
      const clusterIndex = offsetHigh * clustersPerHighUnit + (offsetLow >>> clusterBits);
      if (clusterIndex < blockFirst || clusterIndex >= blockEnd) {
        const tableIndex = Math.floor(clusterIndex / entriesPerBlock);
        block = await shadow.blockFor(tableIndex);
        blockView =
          block && refcountOrder === 4
            ? new DataView(block.buffer, block.byteOffset, block.length)
            : undefined;
        blockFirst = tableIndex * entriesPerBlock;
        blockEnd = blockFirst + entriesPerBlock;
      }
      const index = clusterIndex - blockFirst;
      const refcount = blockView
        ? blockView.getUint16(index * 2)
        : block
          ? readRefcountEntry(block, index, refcountOrder)
          : 0;
      exclusive = refcount === 1;
    }
    if (exclusive === ((high & OFLAG_COPIED_HIGH) !== 0)) continue;
    view.setUint32(at, (high ^ OFLAG_COPIED_HIGH) >>> 0);
    changed = true;
  }
  return changed;
}

/** Where the commit's clusters go: runs for the tables, single clusters for L2 copies and refcount blocks. */
interface Placement {
  l1: number;
  snapshotTable: number;
  copies: number[];
  table: number;
  tableClusters: number;
  /** Refcount-table indexes whose block is written anew, ascending, and the cluster of each. */
  blockIndexes: number[];
  blocks: number[];
  /** Every cluster the commit writes, as [first, count] runs: each gets refcount 1. */
  runs: Array<[number, number]>;
}

/**
 * First cluster at or after `from` that is free both before and after the change (refcount 0 in the
 * image's blocks and in the changed copies) and no metadata of the old state (`avoid`, in case a
 * damaged refcount says otherwise). Whole runs of used clusters are skipped with a native search.
 */
async function nextFree(
  image: Qcow2Image,
  shadow: RefcountShadow,
  from: number,
  avoid: (clusterIndex: number) => boolean,
): Promise<number> {
  const { refcounts } = image;
  const { entriesPerBlock, refcountOrder } = refcounts;
  for (let tableIndex = Math.floor(from / entriesPerBlock); ; tableIndex++) {
    const old = await refcounts.blockAt(tableIndex);
    const changed = shadow.changed.get(tableIndex);
    const blockFirst = tableIndex * entriesPerBlock;
    let index = Math.max(0, from - blockFirst);
    while (index < entriesPerBlock) {
      if (old) index = refcounts.nextZeroEntry(old, index);
      if (index >= entriesPerBlock) break;
      const clusterIndex = blockFirst + index;
      if ((!changed || readRefcountEntry(changed, index, refcountOrder) === 0) && !avoid(clusterIndex))
        return clusterIndex;
      index++;
    }
  }
}

/**
 * Places the commit's clusters, each in the first place free before and after the change past the
 * previous one: the L1 table and snapshot table (contiguous runs), the L2 copies, a refcount table
 * (a run), the new refcount blocks. Every block with a count that changes is copied: the ones the
 * operation changed, the ones counting the placed clusters, the old table's (it is freed), and,
 * since a replaced block frees its own cluster, the blocks counting replaced blocks. More blocks may
 * need a bigger table and more clusters: iterate to the fixed point (as refcount.ts grows its table).
 */
async function place(
  image: Qcow2Image,
  shadow: RefcountShadow,
  sizes: { l1Clusters: number; snapshotClusters: number; copyCount: number },
): Promise<Placement> {
  const { refcounts, clusterSizeBytes, header } = image;
  const { entriesPerBlock } = refcounts;
  const oldTable = refcounts.tableLocation;
  const oldTableFirst = Math.floor(oldTable.offsetBytes / clusterSizeBytes);
  const within = (clusterIndex: number, offsetBytes: number, lengthBytes: number): boolean =>
    clusterIndex * clusterSizeBytes < offsetBytes + lengthBytes &&
    (clusterIndex + 1) * clusterSizeBytes > offsetBytes;
  const avoid = (clusterIndex: number): boolean =>
    clusterIndex === 0 ||
    (clusterIndex >= oldTableFirst && clusterIndex < oldTableFirst + oldTable.clusterCount) ||
    within(clusterIndex, header.l1TableOffsetBytes, header.l1EntryCount * 8) ||
    (refcounts.metadataHint?.(clusterIndex) ?? false);
  let tableClusters = oldTable.clusterCount;
  let blockCount = 0;
  for (let round = 0; round < MAX_PLACEMENT_ROUNDS; round++) {
    const runs: Array<[number, number]> = [];
    let cursor = Math.max(1, refcounts.freeHint);
    const claim = async (count: number, joinRun = true): Promise<number> => {
      if (count === 0) return 0;
      let start = await nextFree(image, shadow, cursor, avoid);
      for (let next = 1; next < count; next++) {
        const found = await nextFree(image, shadow, start + next, avoid);
        if (found === start + next) continue;
        start = found;
        next = 0;
      }
      cursor = start + count;
      const last = runs[runs.length - 1];
      if (joinRun && last && last[0] + last[1] === start) last[1] += count;
      else runs.push([start, count]);
      return start;
    };
    const l1 = await claim(sizes.l1Clusters);
    const snapshotTable = await claim(sizes.snapshotClusters);
    const copies: number[] = [];
    for (let copy = 0; copy < sizes.copyCount; copy++) copies.push(await claim(1));
    const table = await claim(tableClusters);
    const blocks: number[] = [];
    // One run each: the slots past the ones needed are dropped from the end.
    for (let block = 0; block < blockCount; block++) blocks.push(await claim(1, false));

    const indexes = new Set(shadow.changed.keys());
    const addRun = (firstCluster: number, clusterCount: number): void => {
      if (clusterCount <= 0) return;
      const last = Math.floor((firstCluster + clusterCount - 1) / entriesPerBlock);
      for (let index = Math.floor(firstCluster / entriesPerBlock); index <= last; index++) indexes.add(index);
    };
    addRun(oldTableFirst, oldTable.clusterCount);
    for (const [first, count] of runs) addRun(first, count);
    const pending = [...indexes];
    for (let index = pending.pop(); index !== undefined; index = pending.pop()) {
      const blockOffsetBytes = refcounts.blockOffset(index);
      if (blockOffsetBytes === 0) continue;
      const counting = Math.floor(blockOffsetBytes / clusterSizeBytes / entriesPerBlock);
      if (indexes.has(counting)) continue;
      indexes.add(counting);
      pending.push(counting);
    }
    let lastIndex = refcounts.tableEntryCount - 1;
    for (const index of indexes) lastIndex = Math.max(lastIndex, index);
    const neededTable = Math.max(oldTable.clusterCount, Math.ceil(((lastIndex + 1) * 8) / clusterSizeBytes));
    if (neededTable * clusterSizeBytes > QCOW2_MAX_REFTABLE_BYTES) {
      throw new CorruptImageError({
        file: image.path,
        message: `refcount table would grow past ${QCOW2_MAX_REFTABLE_BYTES} bytes (${lastIndex + 1} entries)`,
        fatal: true,
      });
    }
    if (indexes.size <= blockCount && neededTable <= tableClusters) {
      // Block slots past the ones needed stay unused: not written, not counted.
      const unused = blockCount - indexes.size;
      return {
        l1,
        snapshotTable,
        copies,
        table,
        tableClusters,
        blockIndexes: [...indexes].sort((a, b) => a - b),
        blocks: blocks.slice(0, indexes.size),
        runs: runs.slice(0, runs.length - unused),
      };
    }
    blockCount = Math.max(blockCount, indexes.size);
    tableClusters = Math.max(tableClusters, neededTable);
  }
  throw new CorruptImageError({
    file: image.path,
    message: 'refcount blocks for a metadata change did not converge',
  });
}

/**
 * Writes `change` as copies, syncs, switches the header to them in one sector write, syncs, and makes
 * the open image use the new state (caches of the old tables and refcounts dropped). The caller holds
 * the metadata lock with nothing dirty in memory.
 */
export async function commitMetadata(image: Qcow2Image, change: MetadataChange): Promise<void> {
  const { refcounts, clusterSizeBytes, header } = image;
  const shadow = change.refcounts;
  const l1 = change.l1;
  const l1EntryCount = l1.length / 8;
  const clustersOf = (bytes: number): number => Math.ceil(bytes / clusterSizeBytes);

  // The active L2 tables whose COPIED flags change are copied; the old state keeps the originals, and
  // the active L1's reference moves from each to its copy. The new bytes are kept up to a budget,
  // past it derived again when written (the data refcounts do not move in between).
  const copied: Array<{ l1Index: number; fromBytes: number; table: Buffer | undefined }> = [];
  let keptBytes = 0;
  const readActive = tableReadAhead(image, l1EntryCount, (index) => l1Offset(l1, index));
  for (let l1Index = 0; l1Index < l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes % clusterSizeBytes !== 0)
      throw image.corrupt(`L2 table offset ${l2OffsetBytes} of L1 entry ${l1Index} is not cluster aligned`);
    const table = await readActive(l1Index);
    if (!(await deriveCopiedFlags(image, shadow, table))) continue;
    const keep = keptBytes + table.length <= KEPT_COPIES_BYTES;
    if (keep) keptBytes += table.length;
    copied.push({ l1Index, fromBytes: l2OffsetBytes, table: keep ? table : undefined });
    await shadow.adjust(l2OffsetBytes / clusterSizeBytes, -1);
  }
  for (let l1Index = 0; l1Index < l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes !== 0)
      writeEntry(l1, l1Index, l2OffsetBytes, (await shadow.get(l2OffsetBytes / clusterSizeBytes)) === 1);
  }

  const l1Clusters = clustersOf(l1.length);
  const table = change.snapshotTable;
  const snapshotClusters = table ? clustersOf(table.bytes.length) : 0;
  const placement = await place(image, shadow, { l1Clusters, snapshotClusters, copyCount: copied.length });
  const l1OffsetBytes = l1Clusters > 0 ? placement.l1 * clusterSizeBytes : header.l1TableOffsetBytes;
  const snapshotsOffsetBytes = table
    ? snapshotClusters > 0
      ? placement.snapshotTable * clusterSizeBytes
      : 0
    : header.snapshotsOffsetBytes;

  // The copies of the changed L2 tables.
  const readCopied = tableReadAhead(image, copied.length, (index) =>
    copied[index]?.table ? 0 : (copied[index]?.fromBytes ?? 0),
  );
  for (const [index, { l1Index, table: kept }] of copied.entries()) {
    let copy = kept;
    if (!copy) {
      copy = await readCopied(index);
      await deriveCopiedFlags(image, shadow, copy);
    }
    const toBytes = (placement.copies[index] ?? 0) * clusterSizeBytes;
    await image.file.write(toBytes, copy);
    writeEntry(l1, l1Index, toBytes, true);
  }
  // Whole clusters: a reused cluster must not keep old bytes after the tables.
  const padded = (bytes: Buffer): Buffer => {
    const out = Buffer.alloc(clustersOf(bytes.length) * clusterSizeBytes);
    bytes.copy(out);
    return out;
  };
  if (l1Clusters > 0) await image.file.write(l1OffsetBytes, padded(l1));
  if (table && snapshotClusters > 0) await image.file.write(snapshotsOffsetBytes, padded(table.bytes));

  // Refcounts of the commit's own clusters: they are used, the old table and replaced blocks are free.
  const oldTable = refcounts.tableLocation;
  for (const [first, count] of placement.runs) await shadow.adjustRun(first, count, 1);
  await shadow.adjustRun(oldTable.offsetBytes / clusterSizeBytes, oldTable.clusterCount, -1);
  const { blockIndexes, tableClusters } = placement;
  for (const index of blockIndexes) {
    const oldBlockBytes = refcounts.blockOffset(index);
    if (oldBlockBytes !== 0) await shadow.adjust(Math.floor(oldBlockBytes / clusterSizeBytes), -1);
  }
  const newTable = Buffer.alloc(tableClusters * clusterSizeBytes);
  refcounts.copyTable(newTable);
  const placed = new Set(blockIndexes);
  for (const index of shadow.changed.keys()) {
    if (!placed.has(index))
      throw new CorruptImageError({
        file: image.path,
        message: `refcount block ${index} changed outside the plan`,
      });
  }
  for (const [slot, index] of blockIndexes.entries()) {
    const offsetBytes = (placement.blocks[slot] ?? 0) * clusterSizeBytes;
    await image.file.write(offsetBytes, await shadow.writable(index));
    newTable.writeBigUInt64BE(BigInt(offsetBytes), index * 8);
  }
  const tableOffsetBytes = placement.table * clusterSizeBytes;
  await image.file.write(tableOffsetBytes, newTable);
  await image.file.sync();

  // The commit point.
  const sector = Buffer.alloc(512);
  await image.file.read(0, sector);
  if (sector.readUInt32BE(0) !== QCOW2_MAGIC)
    throw image.corrupt('header changed under a metadata commit', 0, 512);
  sector.writeUInt32BE(l1EntryCount, 36);
  sector.writeBigUInt64BE(BigInt(l1OffsetBytes), 40);
  sector.writeBigUInt64BE(BigInt(tableOffsetBytes), 48);
  sector.writeUInt32BE(tableClusters, 56);
  sector.writeUInt32BE(table ? table.count : header.snapshotCount, 60);
  sector.writeBigUInt64BE(BigInt(snapshotsOffsetBytes), 64);
  await image.file.write(0, sector);
  // From here the file names the new state (at least in the page cache): so does the open image.
  image.replaceL1(l1, l1OffsetBytes);
  header.refcountTableOffsetBytes = tableOffsetBytes;
  header.refcountTableClusters = tableClusters;
  header.snapshotCount = table ? table.count : header.snapshotCount;
  header.snapshotsOffsetBytes = snapshotsOffsetBytes;
  refcounts.adoptTable(newTable, tableOffsetBytes);
  image.l2Cache.clear();
  await image.file.sync();
}
