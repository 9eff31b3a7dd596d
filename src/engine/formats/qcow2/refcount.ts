// Refcount table and refcount blocks: reading and writing refcounts of every width (1..64 bits), cluster
// allocation (contiguous runs, and byte-granular runs for compressed clusters), refcount-table growth.
// Implements qcow2.txt "Host cluster management". Blocks are written before the table entries naming them.

import { CorruptImageError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { QCOW2_MAX_REFTABLE_BYTES } from './header.ts';
import { TableCache } from './table-cache.ts';

export interface RefcountOptions {
  file: HostFile;
  path: string;
  clusterBits: number;
  refcountOrder: number;
  tableOffsetBytes: number;
  /** The refcount table, already read (refcount_table_clusters clusters). */
  table: Buffer;
  /** Bytes of refcount blocks kept in memory. */
  cacheBytes?: number;
  /** Writes the header fields refcount_table_offset and refcount_table_clusters (after the new table). */
  writeTableLocation: (offsetBytes: number, clusterCount: number) => Promise<void>;
}

const REFTABLE_OFFSET_HIGH_MASK = 0x00ffffff;
const REFTABLE_OFFSET_LOW_MASK = 0xfffffe00;
/** Refcount-table bytes compared against zeros at once when listing allocated blocks (64 entries). */
const TABLE_SCAN_BYTES = 512;
const ZERO_TABLE_RUN = Buffer.alloc(TABLE_SCAN_BYTES);

/** Reads refcount entry `index` of a block whose entries are 2^order bits wide. */
export function readRefcountEntry(block: Buffer, index: number, refcountOrder: number): number {
  switch (refcountOrder) {
    case 0:
      return ((block[index >>> 3] ?? 0) >>> (index & 7)) & 1;
    case 1:
      return ((block[index >>> 2] ?? 0) >>> (2 * (index & 3))) & 3;
    case 2:
      return ((block[index >>> 1] ?? 0) >>> (4 * (index & 1))) & 15;
    case 3:
      return block[index] ?? 0;
    case 4:
      return block.readUInt16BE(index * 2);
    case 5:
      return block.readUInt32BE(index * 4);
    default: {
      const value = block.readBigUInt64BE(index * 8);
      return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
    }
  }
}

/** Writes refcount entry `index`; `value` must be within the width's range. */
export function writeRefcountEntry(block: Buffer, index: number, refcountOrder: number, value: number): void {
  switch (refcountOrder) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << refcountOrder;
      const perByte = 8 / bits;
      const byteIndex = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block[byteIndex] = ((block[byteIndex] ?? 0) & ~mask) | ((value << shift) & mask);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      block.writeUInt16BE(value, index * 2);
      return;
    case 5:
      block.writeUInt32BE(value, index * 4);
      return;
    default:
      block.writeBigUInt64BE(BigInt(value), index * 8);
  }
}

/** Largest refcount a 2^order-bit entry holds (capped at the largest safe integer). */
export function maxRefcount(refcountOrder: number): number {
  return refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (2 ** refcountOrder) - 1;
}

export function tableEntryOffset(table: Buffer, index: number): number {
  return (
    (table.readUInt32BE(index * 8) & REFTABLE_OFFSET_HIGH_MASK) * 2 ** 32 +
    ((table.readUInt32BE(index * 8 + 4) & REFTABLE_OFFSET_LOW_MASK) >>> 0)
  );
}

export class RefcountManager {
  readonly clusterBits: number;
  readonly clusterSizeBytes: number;
  readonly refcountOrder: number;
  readonly entriesPerBlock: number;
  readonly maxRefcount: number;
  readonly blocks: TableCache;
  private readonly options: RefcountOptions;
  private table: Buffer;
  private tableOffsetBytes: number;
  /** Refcount-table entry indexes changed in memory and not yet written. */
  private readonly dirtyTableIndexes = new Set<number>();
  /** First cluster index that may be free (qemu's free_cluster_index). */
  private freeClusterHint = 0;
  /** Cluster ranges [start, end) being given refcounts right now: the allocator must not hand them out. */
  private readonly reserved: Array<[number, number]> = [];
  /** Repair marks clusters that metadata uses but whose stored refcount is wrong: never hand them out. */
  inUseHint: ((clusterIndex: number) => boolean) | undefined;
  /**
   * Clusters known to hold metadata (header, L1, tables in use): never handed out even when a damaged
   * refcount says they are free, as qemu's overlap check refuses such writes.
   */
  metadataHint: ((clusterIndex: number) => boolean) | undefined;
  /** Next free byte for compressed data (qemu's free_byte_offset), 0 when none. */
  private freeByteOffset = 0;

  constructor(options: RefcountOptions) {
    this.options = options;
    this.clusterBits = options.clusterBits;
    this.clusterSizeBytes = 2 ** options.clusterBits;
    this.refcountOrder = options.refcountOrder;
    this.entriesPerBlock = (this.clusterSizeBytes * 8) / 2 ** options.refcountOrder;
    this.maxRefcount = maxRefcount(options.refcountOrder);
    this.table = options.table;
    this.tableOffsetBytes = options.tableOffsetBytes;
    const cacheBytes = options.cacheBytes ?? 4 * 1024 * 1024;
    this.blocks = new TableCache({
      file: options.file,
      tableBytes: this.clusterSizeBytes,
      capacityTables: Math.ceil(cacheBytes / this.clusterSizeBytes),
    });
  }

  /** No cluster below this one is free (a lower bound, qemu's free_cluster_index). */
  get freeHint(): number {
    return this.freeClusterHint;
  }

  get tableEntryCount(): number {
    return this.table.length / 8;
  }

  get tableLocation(): { offsetBytes: number; clusterCount: number } {
    return { offsetBytes: this.tableOffsetBytes, clusterCount: this.table.length / this.clusterSizeBytes };
  }

  /**
   * Indexes of the table entries that name a refcount block, in order. Runs of zero entries (most of
   * a table) are skipped 64 at a time with a memcmp: `check` runs cold, when a loop over every entry
   * is interpreted and costs milliseconds.
   */
  allocatedTableIndexes(): number[] {
    const table = this.table;
    const indexes: number[] = [];
    for (let at = 0; at < table.length; at += TABLE_SCAN_BYTES) {
      const end = Math.min(at + TABLE_SCAN_BYTES, table.length);
      if (table.compare(ZERO_TABLE_RUN, 0, end - at, at, end) === 0) continue;
      for (let index = at / 8; index < end / 8; index++)
        if (tableEntryOffset(table, index) !== 0) indexes.push(index);
    }
    return indexes;
  }

  /** Copies the refcount table's bytes into the start of `target`. */
  copyTable(target: Buffer): void {
    this.table.copy(target);
  }

  /** Offset of refcount block `tableIndex`, 0 when none is allocated. */
  blockOffset(tableIndex: number): number {
    if (tableIndex >= this.tableEntryCount) return 0;
    return tableEntryOffset(this.table, tableIndex);
  }

  /**
   * Refcount block `tableIndex` (covering clusters from tableIndex * entriesPerBlock), from the cache
   * or the file; undefined where none is allocated. Throws CorruptImageError (fatal) when misaligned.
   */
  async blockAt(tableIndex: number): Promise<Buffer | undefined> {
    const offsetBytes = this.blockOffset(tableIndex);
    if (offsetBytes === 0) return undefined;
    if (offsetBytes % this.clusterSizeBytes !== 0) {
      throw new CorruptImageError({
        file: this.options.path,
        offsetBytes,
        message: `refcount block ${tableIndex} is not cluster aligned`,
        fatal: true,
      });
    }
    return this.blocks.peek(offsetBytes) ?? (await this.blocks.get(offsetBytes));
  }

  private async blockFor(clusterIndex: number): Promise<{ block: Buffer; index: number } | undefined> {
    const block = await this.blockAt(Math.floor(clusterIndex / this.entriesPerBlock));
    return block && { block, index: clusterIndex % this.entriesPerBlock };
  }

  private outOfRange(clusterIndex: number, value: number): CorruptImageError {
    return new CorruptImageError({
      file: this.options.path,
      offsetBytes: clusterIndex * this.clusterSizeBytes,
      message: `refcount of cluster ${clusterIndex} would become ${value} (width ${2 ** this.refcountOrder} bits)`,
      fatal: value < 0,
    });
  }

  /**
   * Refcount of host cluster `clusterIndex` without awaiting when the answer is in memory (its block
   * cached, or no block covering it: 0); undefined when the block must be read (use get()).
   */
  peekRefcount(clusterIndex: number): number | undefined {
    const tableIndex = Math.floor(clusterIndex / this.entriesPerBlock);
    const offsetBytes = this.blockOffset(tableIndex);
    if (offsetBytes === 0) return 0;
    if (offsetBytes % this.clusterSizeBytes !== 0) return undefined;
    const block = this.blocks.peek(offsetBytes);
    if (!block) return undefined;
    return readRefcountEntry(block, clusterIndex % this.entriesPerBlock, this.refcountOrder);
  }

  /** Refcount of host cluster `clusterIndex` (0 where no block covers it). */
  async get(clusterIndex: number): Promise<number> {
    const found = await this.blockFor(clusterIndex);
    return found ? readRefcountEntry(found.block, found.index, this.refcountOrder) : 0;
  }

  /** Adds `delta` to the refcount of `clusterIndex`; allocates the refcount block when needed. */
  async adjust(clusterIndex: number, delta: number): Promise<number> {
    let found = await this.blockFor(clusterIndex);
    if (!found) {
      if (delta < 0) {
        throw new CorruptImageError({
          file: this.options.path,
          offsetBytes: clusterIndex * this.clusterSizeBytes,
          message: 'freeing a cluster with refcount 0',
          fatal: true,
        });
      }
      await this.allocateBlock(Math.floor(clusterIndex / this.entriesPerBlock));
      found = await this.blockFor(clusterIndex);
      if (!found)
        throw new CorruptImageError({ file: this.options.path, message: 'refcount block allocation failed' });
    }
    const { block, index } = found;
    const value = readRefcountEntry(block, index, this.refcountOrder) + delta;
    if (value < 0 || value > this.maxRefcount) throw this.outOfRange(clusterIndex, value);
    writeRefcountEntry(block, index, this.refcountOrder, value);
    this.blocks.markDirty(this.blockOffset(Math.floor(clusterIndex / this.entriesPerBlock)));
    if (value === 0 && clusterIndex < this.freeClusterHint) this.freeClusterHint = clusterIndex;
    return value;
  }

  /**
   * adjust() for `clusterCount` consecutive clusters from `firstCluster`, with one block lookup per
   * refcount block instead of one per cluster: snapshot walks over mostly contiguous data clusters.
   * Same checks and errors as adjust() (clusters before a failing one keep their new refcounts).
   */
  async adjustRun(firstCluster: number, clusterCount: number, delta: number): Promise<void> {
    const endCluster = firstCluster + clusterCount;
    const order = this.refcountOrder;
    let clusterIndex = firstCluster;
    while (clusterIndex < endCluster) {
      const tableIndex = Math.floor(clusterIndex / this.entriesPerBlock);
      const block = await this.blockAt(tableIndex);
      if (!block) {
        // No block yet: adjust() allocates one (or reports the corruption of a decrement).
        await this.adjust(clusterIndex, delta);
        clusterIndex++;
        continue;
      }
      this.blocks.markDirty(this.blockOffset(tableIndex));
      const blockFirstCluster = tableIndex * this.entriesPerBlock;
      const blockEnd = Math.min(endCluster, blockFirstCluster + this.entriesPerBlock);
      // 16-bit refcounts (the default) through a DataView: this loop runs once per command, mostly
      // before V8 optimizes it, where DataView access costs a fraction of Buffer's read/write calls.
      const view = order === 4 ? new DataView(block.buffer, block.byteOffset, block.length) : undefined;
      for (; clusterIndex < blockEnd; clusterIndex++) {
        const index = clusterIndex - blockFirstCluster;
        const value = (view ? view.getUint16(index * 2) : readRefcountEntry(block, index, order)) + delta;
        if (value < 0 || value > this.maxRefcount) throw this.outOfRange(clusterIndex, value);
        if (view) view.setUint16(index * 2, value);
        else writeRefcountEntry(block, index, order, value);
        if (value === 0 && clusterIndex < this.freeClusterHint) this.freeClusterHint = clusterIndex;
      }
    }
  }

  /** Sets a refcount to an absolute value (repair). */
  async set(clusterIndex: number, value: number): Promise<void> {
    const current = await this.get(clusterIndex);
    if (current !== value) await this.adjust(clusterIndex, value - current);
  }

  private isReserved(clusterIndex: number): boolean {
    for (const [start, end] of this.reserved) if (clusterIndex >= start && clusterIndex < end) return true;
    return false;
  }

  private async withReserved<T>(start: number, end: number, work: () => Promise<T>): Promise<T> {
    this.reserved.push([start, end]);
    try {
      return await work();
    } finally {
      this.reserved.pop();
    }
  }

  private isKnownMetadata(clusterIndex: number): boolean {
    if (clusterIndex === 0) return true;
    const tableFirst = this.tableOffsetBytes / this.clusterSizeBytes;
    if (clusterIndex >= tableFirst && clusterIndex < tableFirst + this.table.length / this.clusterSizeBytes)
      return true;
    return this.metadataHint?.(clusterIndex) ?? false;
  }

  /** Index of the first zero entry of `block` at or after `fromIndex`; entriesPerBlock when none. */
  nextZeroEntry(block: Buffer, fromIndex: number): number {
    if (this.refcountOrder < 3) {
      for (let index = fromIndex; index < this.entriesPerBlock; index++)
        if (readRefcountEntry(block, index, this.refcountOrder) === 0) return index;
      return this.entriesPerBlock;
    }
    const entryBytes = 2 ** (this.refcountOrder - 3);
    const zero = ZERO_TABLE_RUN.subarray(0, entryBytes);
    let at = fromIndex * entryBytes;
    for (;;) {
      const found = block.indexOf(zero, at);
      if (found < 0) return this.entriesPerBlock;
      // A match straddling two entries is not a zero entry: look again from the next entry.
      if (found % entryBytes === 0) return found / entryBytes;
      at = found + entryBytes - (found % entryBytes);
    }
  }

  /** First index of `count` contiguous free clusters at or after the hint, never reserved ones. */
  private async findFree(count: number): Promise<number> {
    let start = this.freeClusterHint;
    let runLength = 0;
    let sawFree = false;
    // The block in hand while the scan stays inside it: the first allocation after opening walks
    // every used cluster (80 Ki for 5 GiB), and a table lookup and Buffer call per cluster, run
    // before V8 optimizes the loop, cost ~10 ms. Nothing changes refcounts during the scan.
    const order = this.refcountOrder;
    let blockTableIndex = -1;
    let block: Buffer | undefined;
    let view: DataView | undefined;
    for (let clusterIndex = start; ; clusterIndex++) {
      const reserved = this.reserved.length > 0 && this.isReserved(clusterIndex);
      let free = !reserved && !this.inUseHint?.(clusterIndex);
      if (free) {
        const tableIndex = Math.floor(clusterIndex / this.entriesPerBlock);
        if (tableIndex !== blockTableIndex) {
          block = await this.blockAt(tableIndex);
          view =
            block && order === 4 ? new DataView(block.buffer, block.byteOffset, block.length) : undefined;
          blockTableIndex = tableIndex;
        }
        const index = clusterIndex - tableIndex * this.entriesPerBlock;
        const refcount = view
          ? view.getUint16(index * 2)
          : block
            ? readRefcountEntry(block, index, order)
            : 0;
        if (refcount !== 0 && block && this.reserved.length === 0 && !this.inUseHint) {
          // Skip to the block's next zero entry with a native search: every cluster before it is in
          // use and not reserved, so the loop would only move the hint and the run start past them.
          const next = tableIndex * this.entriesPerBlock + this.nextZeroEntry(block, index + 1);
          if (!sawFree) this.freeClusterHint = next;
          runLength = 0;
          start = next;
          clusterIndex = next - 1;
          continue;
        }
        free = refcount === 0 && !this.isKnownMetadata(clusterIndex);
      }
      if (!free) {
        // Clusters in use before the first free one never need scanning again.
        if (!sawFree && !reserved) this.freeClusterHint = clusterIndex + 1;
        runLength = 0;
        start = clusterIndex + 1;
        continue;
      }
      sawFree = true;
      runLength++;
      if (runLength === count) return start;
    }
  }

  /**
   * Allocates `count` contiguous host clusters with refcount 1; returns the first index.
   * The refcount blocks are dirty in the cache: flush() writes them before any L2 table names the clusters.
   */
  async allocateClusters(count: number): Promise<number> {
    const start = await this.findFree(count);
    // One block lookup per refcount block, not an await per cluster (a convert allocates a chunk's
    // 32 clusters at once); a block allocated on the way must not be placed inside the run.
    await this.withReserved(start, start + count, () => this.adjustRun(start, count, 1));
    if (this.freeClusterHint === start) this.freeClusterHint = start + count;
    return start;
  }

  /**
   * Allocates `lengthBytes` (< one cluster) at byte granularity for compressed data, packing them after the
   * previous allocation as qemu's qcow2_alloc_bytes does; every touched cluster gets one more reference.
   */
  async allocateBytes(lengthBytes: number): Promise<number> {
    let offsetBytes = this.freeByteOffset;
    if (offsetBytes !== 0) {
      // A cluster that filled its refcount, or was freed meanwhile (it may hold other data now), is not reused.
      const refcount = await this.get(Math.floor(offsetBytes / this.clusterSizeBytes));
      if (refcount >= this.maxRefcount || refcount === 0) offsetBytes = 0;
    }
    const freeInCluster =
      offsetBytes === 0 ? 0 : this.clusterSizeBytes - (offsetBytes % this.clusterSizeBytes);
    if (offsetBytes === 0 || freeInCluster < lengthBytes) {
      const nextCluster = await this.findFree(1);
      const nextOffset = nextCluster * this.clusterSizeBytes;
      if (
        offsetBytes === 0 ||
        Math.ceil(offsetBytes / this.clusterSizeBytes) * this.clusterSizeBytes !== nextOffset
      )
        offsetBytes = nextOffset;
    }
    const firstCluster = Math.floor(offsetBytes / this.clusterSizeBytes);
    const lastCluster = Math.floor((offsetBytes + lengthBytes - 1) / this.clusterSizeBytes);
    await this.withReserved(firstCluster, lastCluster + 1, async () => {
      for (let clusterIndex = firstCluster; clusterIndex <= lastCluster; clusterIndex++)
        await this.adjust(clusterIndex, 1);
    });
    if (this.freeClusterHint <= lastCluster) this.freeClusterHint = lastCluster + 1;
    const end = offsetBytes + lengthBytes;
    this.freeByteOffset = end % this.clusterSizeBytes === 0 ? 0 : end;
    return offsetBytes;
  }

  /** Drops one reference from each cluster in [firstCluster, firstCluster + count). */
  async free(firstCluster: number, count: number): Promise<void> {
    for (let clusterIndex = firstCluster; clusterIndex < firstCluster + count; clusterIndex++) {
      const value = await this.adjust(clusterIndex, -1);
      if (
        value === 0 &&
        this.freeByteOffset !== 0 &&
        Math.floor(this.freeByteOffset / this.clusterSizeBytes) === clusterIndex
      ) {
        this.freeByteOffset = 0;
      }
    }
  }

  private async allocateBlock(tableIndex: number): Promise<void> {
    if (tableIndex >= this.tableEntryCount) await this.growTable(tableIndex + 1);
    if (this.blockOffset(tableIndex) !== 0) return;
    const blockCluster = await this.findFree(1);
    const blockOffsetBytes = blockCluster * this.clusterSizeBytes;
    await this.blocks.create(blockOffsetBytes);
    this.setTableEntry(tableIndex, blockOffsetBytes);
    // The block's own cluster is taken from now on, whichever block covers it.
    await this.withReserved(blockCluster, blockCluster + 1, () => this.adjust(blockCluster, 1));
  }

  private setTableEntry(tableIndex: number, blockOffsetBytes: number): void {
    this.table.writeBigUInt64BE(BigInt(blockOffsetBytes), tableIndex * 8);
    this.dirtyTableIndexes.add(tableIndex);
  }

  /**
   * Moves the refcount table to a bigger one at the end of the used clusters. The new table and the
   * refcount blocks covering it are written before the header points at it; the old table is then freed.
   */
  private async growTable(minimumEntries: number): Promise<void> {
    const entriesPerCluster = this.clusterSizeBytes / 8;
    if (minimumEntries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
      // Only a cluster index far past any real file gets here (damaged metadata naming it).
      throw new CorruptImageError({
        file: this.options.path,
        message: `refcount table would grow past ${QCOW2_MAX_REFTABLE_BYTES} bytes (${minimumEntries} entries)`,
        fatal: true,
      });
    }
    // Grow by half again, as qemu does, so repeated growth stays rare.
    let newClusters = Math.ceil(
      (Math.max(minimumEntries, Math.ceil(this.tableEntryCount * 1.5)) * 8) / this.clusterSizeBytes,
    );
    // Place the table past every cluster the current table can describe as used, then add blocks for it.
    // Every cluster past the current table's coverage is free; skip the ones being allocated right now.
    let start = this.tableEntryCount * this.entriesPerBlock;
    for (const [, end] of this.reserved) start = Math.max(start, end);
    let blockCount = 0;
    for (;;) {
      const firstNewBlockIndex = Math.floor(start / this.entriesPerBlock);
      const endCluster = start + newClusters + blockCount;
      const lastBlockIndex = Math.floor((endCluster - 1) / this.entriesPerBlock);
      const neededBlocks = lastBlockIndex - firstNewBlockIndex + 1;
      const neededEntries = Math.max(minimumEntries, lastBlockIndex + 1);
      const neededClusters = Math.ceil(neededEntries / entriesPerCluster);
      if (neededBlocks <= blockCount && neededClusters <= newClusters) break;
      blockCount = Math.max(blockCount, neededBlocks);
      newClusters = Math.max(newClusters, neededClusters);
    }
    const newTable = Buffer.alloc(newClusters * this.clusterSizeBytes);
    this.table.copy(newTable);
    const tableStart = start;
    const blocksStart = start + newClusters;
    // New blocks: each covers entriesPerBlock clusters; the region [tableStart, blocksStart + blockCount) lies in them.
    const firstNewBlockIndex = Math.floor(tableStart / this.entriesPerBlock);
    for (let block = 0; block < blockCount; block++) {
      const blockBuffer = Buffer.alloc(this.clusterSizeBytes);
      const tableIndex = firstNewBlockIndex + block;
      for (let clusterIndex = tableStart; clusterIndex < blocksStart + blockCount; clusterIndex++) {
        if (Math.floor(clusterIndex / this.entriesPerBlock) === tableIndex)
          writeRefcountEntry(blockBuffer, clusterIndex % this.entriesPerBlock, this.refcountOrder, 1);
      }
      const blockOffsetBytes = (blocksStart + block) * this.clusterSizeBytes;
      await this.options.file.write(blockOffsetBytes, blockBuffer);
      newTable.writeBigUInt64BE(BigInt(blockOffsetBytes), tableIndex * 8);
    }
    // Blocks already named by the old table must be on disk before the new table is.
    await this.flushBlocks();
    await this.options.file.write(tableStart * this.clusterSizeBytes, newTable);
    await this.options.file.sync();
    const oldOffsetBytes = this.tableOffsetBytes;
    const oldClusters = this.table.length / this.clusterSizeBytes;
    this.table = newTable;
    this.tableOffsetBytes = tableStart * this.clusterSizeBytes;
    this.dirtyTableIndexes.clear();
    await this.options.writeTableLocation(this.tableOffsetBytes, newClusters);
    await this.options.file.sync();
    await this.free(oldOffsetBytes / this.clusterSizeBytes, oldClusters);
  }

  /**
   * Moves the refcount table to the first free clusters, sized for `entryCount` entries (qemu's
   * qcow2_refcount_area placement for falloc/full preallocation). Writes it, points the header at it, frees the old one.
   */
  async moveTable(entryCount: number): Promise<void> {
    const clusterCount = Math.max(
      this.table.length / this.clusterSizeBytes,
      Math.ceil((entryCount * 8) / this.clusterSizeBytes),
    );
    const start = await this.allocateClusters(clusterCount);
    const newTable = Buffer.alloc(clusterCount * this.clusterSizeBytes);
    this.table.copy(newTable);
    await this.flushBlocks();
    await this.options.file.write(start * this.clusterSizeBytes, newTable);
    await this.options.file.sync();
    const oldOffsetBytes = this.tableOffsetBytes;
    const oldClusters = this.table.length / this.clusterSizeBytes;
    this.table = newTable;
    this.tableOffsetBytes = start * this.clusterSizeBytes;
    this.dirtyTableIndexes.clear();
    await this.options.writeTableLocation(this.tableOffsetBytes, clusterCount);
    await this.options.file.sync();
    await this.free(oldOffsetBytes / this.clusterSizeBytes, oldClusters);
    this.freeClusterHint = Math.min(this.freeClusterHint, oldOffsetBytes / this.clusterSizeBytes);
  }

  /**
   * Switches to a refcount table already written at `offsetBytes` and named by the header (a metadata
   * commit wrote new blocks beside the old ones): forgets the cached blocks, which may be the freed
   * old ones, and the free-space hints. Nothing may be dirty.
   */
  adoptTable(table: Buffer, offsetBytes: number): void {
    this.table = table;
    this.tableOffsetBytes = offsetBytes;
    this.dirtyTableIndexes.clear();
    this.blocks.clear();
    this.freeClusterHint = 0;
    this.freeByteOffset = 0;
  }

  /** Writes dirty refcount blocks (no sync). */
  async flushBlocks(): Promise<void> {
    await this.blocks.flush();
  }

  /** Writes dirty blocks, syncs, then writes the refcount-table entries naming new blocks. */
  async flush(): Promise<void> {
    if (!this.blocks.hasDirty() && this.dirtyTableIndexes.size === 0) return;
    await this.blocks.flush();
    if (this.dirtyTableIndexes.size === 0) return;
    await this.options.file.sync();
    const indexes = [...this.dirtyTableIndexes].sort((a, b) => a - b);
    const first = indexes[0] ?? 0;
    const last = indexes[indexes.length - 1] ?? 0;
    await this.options.file.write(
      this.tableOffsetBytes + first * 8,
      this.table.subarray(first * 8, (last + 1) * 8),
    );
    this.dirtyTableIndexes.clear();
  }

  /** One past the highest cluster with a nonzero refcount (scans every block; for check and measure). */
  async usedClusterEnd(): Promise<number> {
    let end = 0;
    for (let tableIndex = 0; tableIndex < this.tableEntryCount; tableIndex++) {
      if (this.blockOffset(tableIndex) === 0) continue;
      for (let index = 0; index < this.entriesPerBlock; index++) {
        const clusterIndex = tableIndex * this.entriesPerBlock + index;
        if ((await this.get(clusterIndex)) !== 0) end = clusterIndex + 1;
      }
    }
    return end;
  }
}
