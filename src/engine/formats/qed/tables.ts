// QED guest offset -> host offset: the L1 table (kept in memory), L2 tables (a small LRU cache), entry
// validation (cluster-aligned, after the header, before EOF) and table/cluster allocation at EOF.
// Spec: qemu docs/interop/qed_spec.txt ("Tables", "Cluster allocation").

import { CorruptImageError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { readExact, setU64le, viewOf } from '../common/binary.ts';
import { QED_CLUSTER_ZERO, type QedHeader, qedTableEntries } from './header.ts';

const L2_CACHE_TABLES = 16;

export type QedLookup =
  | { kind: 'unallocated' }
  | { kind: 'zero' }
  | { kind: 'data'; hostOffsetBytes: number };

/** Reads, caches and updates the two table levels of one open QED image. */
export class QedTables {
  readonly header: QedHeader;
  readonly entriesPerTable: number;
  readonly tableBytes: number;
  private readonly file: HostFile;
  private readonly path: string;
  private l1: Uint8Array;
  private readonly l2Cache = new Map<number, Uint8Array>();
  /** Cluster-aligned end of the file: where the next table or cluster goes. */
  fileEndBytes: number;

  private constructor(file: HostFile, path: string, header: QedHeader, l1: Uint8Array, fileEndBytes: number) {
    this.file = file;
    this.path = path;
    this.header = header;
    this.entriesPerTable = qedTableEntries(header);
    this.tableBytes = header.tableClusters * header.clusterSizeBytes;
    this.l1 = l1;
    this.fileEndBytes = fileEndBytes;
  }

  /** Loads the L1 table; throws CorruptImageError / ImageFormatError when it lies past EOF. */
  static async load(file: HostFile, path: string, header: QedHeader): Promise<QedTables> {
    const fileSizeBytes = await file.sizeBytes();
    // Round the file end up: a file cut mid-cluster still allocates at the next cluster boundary.
    const fileEndBytes = Math.ceil(fileSizeBytes / header.clusterSizeBytes) * header.clusterSizeBytes;
    const tableBytes = header.tableClusters * header.clusterSizeBytes;
    if (header.l1TableOffsetBytes + tableBytes > fileEndBytes) {
      throw new CorruptImageError({
        file: path,
        offsetBytes: header.l1TableOffsetBytes,
        lengthBytes: tableBytes,
        message: 'QED L1 table extends past the end of the file',
      });
    }
    // The check above keeps the read inside the cluster-rounded file end; a short tail reads as zeros.
    const l1 = new Uint8Array(tableBytes);
    await file.read(header.l1TableOffsetBytes, l1);
    return new QedTables(file, path, header, l1, fileEndBytes);
  }

  /** Checks a table or cluster offset: aligned, after the header, inside the file. */
  isValidOffset(offsetBytes: number, lengthBytes: number): boolean {
    const { clusterSizeBytes, headerClusters } = this.header;
    return (
      offsetBytes % clusterSizeBytes === 0 &&
      offsetBytes >= headerClusters * clusterSizeBytes &&
      offsetBytes + lengthBytes <= this.fileEndBytes
    );
  }

  /** Reads entry `index` of a table held in `table`; throws CorruptImageError past 2^53. */
  entryAt(table: Uint8Array, index: number, tableOffsetBytes: number): number {
    const value = viewOf(table).getBigUint64(index * 8, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: tableOffsetBytes + index * 8,
        lengthBytes: 8,
        message: `QED table entry ${value} is out of range`,
      });
    }
    return Number(value);
  }

  l1Entry(l1Index: number): number {
    return this.entryAt(this.l1, l1Index, this.header.l1TableOffsetBytes);
  }

  /** The L2 table at `offsetBytes` (validated), from cache or disk. */
  async l2Table(offsetBytes: number, l1Index: number): Promise<Uint8Array> {
    const cached = this.l2Cache.get(offsetBytes);
    if (cached) {
      this.l2Cache.delete(offsetBytes);
      this.l2Cache.set(offsetBytes, cached);
      return cached;
    }
    if (!this.isValidOffset(offsetBytes, this.tableBytes)) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: this.header.l1TableOffsetBytes + l1Index * 8,
        lengthBytes: 8,
        fatal: true,
        message: `QED L1 entry ${l1Index} points to an invalid L2 table offset ${offsetBytes}`,
      });
    }
    const table = await readExact(this.file, offsetBytes, this.tableBytes, 'QED L2 table');
    this.cacheL2(offsetBytes, table);
    return table;
  }

  private cacheL2(offsetBytes: number, table: Uint8Array): void {
    this.l2Cache.set(offsetBytes, table);
    if (this.l2Cache.size > L2_CACHE_TABLES) {
      const oldest = this.l2Cache.keys().next().value;
      if (oldest !== undefined) this.l2Cache.delete(oldest);
    }
  }

  /** Maps cluster `clusterIndex` (guest offset / cluster size). */
  async lookup(clusterIndex: number): Promise<QedLookup> {
    const l1Index = Math.floor(clusterIndex / this.entriesPerTable);
    const l2Index = clusterIndex % this.entriesPerTable;
    const l2Offset = this.l1Entry(l1Index);
    if (l2Offset === 0) return { kind: 'unallocated' };
    const table = await this.l2Table(l2Offset, l1Index);
    const entry = this.entryAt(table, l2Index, l2Offset);
    if (entry === 0) return { kind: 'unallocated' };
    if (entry === QED_CLUSTER_ZERO) return { kind: 'zero' };
    if (!this.isValidOffset(entry, 1)) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: l2Offset + l2Index * 8,
        lengthBytes: 8,
        fatal: true,
        message: `QED L2 entry for cluster ${clusterIndex} points to an invalid offset ${entry}`,
      });
    }
    return { kind: 'data', hostOffsetBytes: entry };
  }

  /** Extends the file by `lengthBytes` (zeros) and returns where the new space starts. */
  async allocate(lengthBytes: number): Promise<number> {
    const at = this.fileEndBytes;
    this.fileEndBytes += lengthBytes;
    await this.file.truncate(this.fileEndBytes);
    return at;
  }

  /** Makes sure cluster `clusterIndex` has an L2 table: a new zeroed one is written before the L1 points at it. */
  async ensureL2(clusterIndex: number): Promise<void> {
    const l1Index = Math.floor(clusterIndex / this.entriesPerTable);
    if (this.l1Entry(l1Index) !== 0) return;
    const tableOffset = await this.allocate(this.tableBytes);
    this.cacheL2(tableOffset, new Uint8Array(this.tableBytes));
    await this.setEntry(this.l1, l1Index, this.header.l1TableOffsetBytes, tableOffset);
  }

  /** Points cluster `clusterIndex` at `value` (a host offset, 0 or QED_CLUSTER_ZERO); the L2 must exist. */
  async setCluster(clusterIndex: number, value: number): Promise<void> {
    const l1Index = Math.floor(clusterIndex / this.entriesPerTable);
    const l2Offset = this.l1Entry(l1Index);
    const table = await this.l2Table(l2Offset, l1Index);
    await this.setEntry(table, clusterIndex % this.entriesPerTable, l2Offset, value);
  }

  private async setEntry(
    table: Uint8Array,
    index: number,
    tableOffsetBytes: number,
    value: number,
  ): Promise<void> {
    setU64le(viewOf(table), index * 8, value);
    await this.file.write(tableOffsetBytes + index * 8, table.subarray(index * 8, index * 8 + 8));
  }
}
