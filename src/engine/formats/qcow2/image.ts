// The open qcow2 image's metadata state: header, L1 table, L2 table cache, refcounts, deferred frees,
// and the flush order that makes a crash leave only leaks: data -> refcount blocks -> L2 -> L1 -> frees.
// Implements qcow2.txt "Cluster mapping" lookups and L2 allocation; device.ts builds guest I/O on it.

import { CorruptImageError } from '../../errors.ts';
import type { OpenDataFileFn } from '../driver.ts';
import type { PersistentBitmaps } from './bitmaps.ts';
import type { HostFile } from '../../io/host-file.ts';
import {
  ALL_SUBCLUSTERS,
  clearEntry,
  decodeL2,
  type L2Mapping,
  l1Copied,
  l1Offset,
  writeCompressedEntry,
  writeEntry,
  writeExtendedEntry,
} from './cluster-map.ts';
import { HEADER_FIELD, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, type Qcow2Header } from './header.ts';
import { RefcountManager } from './refcount.ts';
import { TableCache } from './table-cache.ts';

/** Bytes of L2 tables kept in memory (qemu 7.2's default cap is 32 MiB; this covers 1 TiB at 64 KiB clusters). */
export const DEFAULT_L2_CACHE_BYTES = 16 * 1024 * 1024;

export interface Qcow2ImageParts {
  file: HostFile;
  path: string;
  header: Qcow2Header;
  l1: Buffer;
  refcountTable: Buffer;
  readOnly: boolean;
  l2CacheBytes?: number;
  refcountCacheBytes?: number;
}

export interface ClusterLookup {
  mapping: L2Mapping;
  /** Offset of the L2 table holding the entry, 0 when the L1 entry is empty. */
  l2OffsetBytes: number;
  l2Index: number;
}

const UNALLOCATED: L2Mapping = {
  kind: 'unallocated',
  hostOffsetBytes: 0,
  copied: false,
  compressedSizeBytes: 0,
  hasReservedBits: false,
};

export class Qcow2Image {
  readonly file: HostFile;
  readonly path: string;
  readonly header: Qcow2Header;
  readonly clusterBits: number;
  readonly clusterSizeBytes: number;
  readonly l2EntryCount: number;
  /** 16-byte L2 entries with subcluster bitmaps (read-only support). */
  readonly extendedL2: boolean;
  l1: Buffer;
  readonly l2Cache: TableCache;
  readonly refcounts: RefcountManager;
  readonly readOnly: boolean;
  /** Persistent dirty bitmaps (bitmaps.ts), set by loadImage when the image has valid ones. */
  bitmaps: PersistentBitmaps | undefined;
  /** The external data file (data-file.ts), when the image has one and it was opened. */
  dataFile: HostFile | undefined;
  /** How the data file was opened (amend data_file opens the new name the same way). */
  openDataFile: OpenDataFileFn | undefined;
  /** Data clusters live in an external data file at their guest offsets, without refcounts. */
  readonly hasDataFile: boolean;
  /** Host cluster runs whose reference was dropped in an L2/L1 entry not yet on disk. */
  private pendingFrees: Array<{ firstCluster: number; clusterCount: number }> = [];
  private l1DirtyFirst = Number.POSITIVE_INFINITY;
  private l1DirtyLast = -1;

  constructor(parts: Qcow2ImageParts) {
    this.file = parts.file;
    this.path = parts.path;
    this.header = parts.header;
    this.clusterBits = parts.header.clusterBits;
    this.clusterSizeBytes = 2 ** this.clusterBits;
    this.extendedL2 = (parts.header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    this.l2EntryCount = this.clusterSizeBytes / (this.extendedL2 ? 16 : 8);
    this.l1 = parts.l1;
    this.readOnly = parts.readOnly;
    this.hasDataFile = (parts.header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    this.refcounts = new RefcountManager({
      file: parts.file,
      path: parts.path,
      clusterBits: this.clusterBits,
      refcountOrder: parts.header.refcountOrder,
      tableOffsetBytes: parts.header.refcountTableOffsetBytes,
      table: parts.refcountTable,
      cacheBytes: parts.refcountCacheBytes,
      writeTableLocation: async (offsetBytes, clusterCount) => {
        const field = Buffer.alloc(12);
        field.writeBigUInt64BE(BigInt(offsetBytes), 0);
        field.writeUInt32BE(clusterCount, 8);
        await this.file.write(HEADER_FIELD.refcountTableOffset, field);
        this.header.refcountTableOffsetBytes = offsetBytes;
        this.header.refcountTableClusters = clusterCount;
      },
    });
    this.refcounts.metadataHint = (clusterIndex) => {
      const offsetBytes = clusterIndex * this.clusterSizeBytes;
      const l1Start = this.header.l1TableOffsetBytes;
      if (offsetBytes + this.clusterSizeBytes > l1Start && offsetBytes < l1Start + this.l1.length)
        return true;
      return this.l2Cache.peekQuiet(offsetBytes) || this.refcounts.blocks.peekQuiet(offsetBytes);
    };
    // An L2 table is written only after the refcount blocks that account for what it names are durable.
    this.l2Cache = new TableCache({
      file: parts.file,
      tableBytes: this.clusterSizeBytes,
      capacityTables: Math.ceil((parts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) / this.clusterSizeBytes),
      beforeWrite: async () => {
        await this.refcounts.flush();
        await this.file.sync();
      },
    });
  }

  /** The file guest data clusters are read from and written to. */
  get dataHostFile(): HostFile {
    return this.dataFile ?? this.file;
  }

  /**
   * Host cluster index for `clusterCount` new data clusters from guest cluster `firstGuestCluster`:
   * allocated in the image, or (external data file) the guest clusters themselves.
   */
  async allocateDataClusters(firstGuestCluster: number, clusterCount: number): Promise<number> {
    if (this.hasDataFile) return firstGuestCluster;
    return this.refcounts.allocateClusters(clusterCount);
  }

  /** Switches to a new, already written L1 table (grow). */
  replaceL1(l1: Buffer, offsetBytes: number): void {
    this.l1 = l1;
    this.header.l1TableOffsetBytes = offsetBytes;
    this.header.l1EntryCount = l1.length / 8;
  }

  get l1EntryCount(): number {
    return this.l1.length / 8;
  }

  corrupt(message: string, offsetBytes?: number, lengthBytes?: number): CorruptImageError {
    return new CorruptImageError({ file: this.path, offsetBytes, lengthBytes, message, fatal: true });
  }

  private checkL2Offset(l1Index: number, offsetBytes: number): void {
    if (offsetBytes > Number.MAX_SAFE_INTEGER - this.clusterSizeBytes) {
      throw this.corrupt(
        `L2 table offset of L1 entry ${l1Index} is beyond any file`,
        this.header.l1TableOffsetBytes + l1Index * 8,
        8,
      );
    }
    if (offsetBytes % this.clusterSizeBytes !== 0) {
      throw this.corrupt(
        `L2 table offset ${offsetBytes} of L1 entry ${l1Index} is not cluster aligned`,
        this.header.l1TableOffsetBytes + l1Index * 8,
        8,
      );
    }
    if (offsetBytes < this.clusterSizeBytes) {
      throw this.corrupt(
        `L2 table of L1 entry ${l1Index} overlaps the header`,
        this.header.l1TableOffsetBytes + l1Index * 8,
        8,
      );
    }
  }

  /**
   * lookup() without awaiting, when the answer is in memory (no L2 table, or its table cached);
   * undefined when the table must be read. Sequential I/O maps thousands of clusters per table, and
   * an await per cluster (a promise and a microtask turn each) cost more than the decoding.
   */
  lookupCached(guestCluster: number): ClusterLookup | undefined {
    const l1Index = Math.floor(guestCluster / this.l2EntryCount);
    const l2Index = guestCluster % this.l2EntryCount;
    if (l1Index >= this.l1EntryCount) return { mapping: UNALLOCATED, l2OffsetBytes: 0, l2Index };
    const l2OffsetBytes = l1Offset(this.l1, l1Index);
    if (l2OffsetBytes === 0) return { mapping: UNALLOCATED, l2OffsetBytes: 0, l2Index };
    this.checkL2Offset(l1Index, l2OffsetBytes);
    const table = this.l2Cache.peek(l2OffsetBytes);
    if (!table) return undefined;
    return { mapping: this.decodeChecked(table, l2Index, l2OffsetBytes), l2OffsetBytes, l2Index };
  }

  /** The mapping of guest cluster `guestCluster` (no allocation). Throws CorruptImageError on bad tables. */
  async lookup(guestCluster: number): Promise<ClusterLookup> {
    const cached = this.lookupCached(guestCluster);
    if (cached) return cached;
    const l2OffsetBytes = l1Offset(this.l1, Math.floor(guestCluster / this.l2EntryCount));
    const l2Index = guestCluster % this.l2EntryCount;
    const table = await this.l2Cache.get(l2OffsetBytes);
    return { mapping: this.decodeChecked(table, l2Index, l2OffsetBytes), l2OffsetBytes, l2Index };
  }

  /**
   * Decodes entry `l2Index` of the L2 table at `l2OffsetBytes` and rejects what cannot be real: a data
   * cluster that is not cluster aligned, or any host offset past 2^53 (CorruptImageError, fatal).
   */
  decodeChecked(table: Buffer, l2Index: number, l2OffsetBytes: number): L2Mapping {
    let mapping = decodeL2(table, l2Index, this.clusterBits, this.extendedL2);
    // Offset 0 is a real data cluster in an external data file; COPIED tells it from unallocated (qemu does the same).
    if (this.hasDataFile && mapping.kind === 'unallocated' && mapping.copied)
      mapping = { ...mapping, kind: 'normal' };
    const entryOffsetBytes = l2OffsetBytes + l2Index * (this.extendedL2 ? 16 : 8);
    if (
      (mapping.kind === 'normal' || mapping.kind === 'zero-alloc') &&
      mapping.hostOffsetBytes % this.clusterSizeBytes !== 0
    ) {
      throw this.corrupt(
        `data cluster offset ${mapping.hostOffsetBytes} is not cluster aligned`,
        entryOffsetBytes,
        8,
      );
    }
    // Offsets are 56-bit on disk; past 2^53 they cannot be real in a file this process can address.
    if (mapping.hostOffsetBytes > Number.MAX_SAFE_INTEGER - 4 * this.clusterSizeBytes) {
      throw this.corrupt(`host offset ${mapping.hostOffsetBytes} is beyond any file`, entryOffsetBytes, 8);
    }
    return mapping;
  }

  /** Number of guest clusters from `guestCluster` sharing its L1 entry (to skip empty L2 ranges fast). */
  clustersLeftInL2(guestCluster: number): number {
    return this.l2EntryCount - (guestCluster % this.l2EntryCount);
  }

  /**
   * The L2 table for `guestCluster`, allocated (or copied, when shared with a snapshot) if needed.
   * Returns its offset; the table is in the cache.
   */
  async writableL2(guestCluster: number): Promise<number> {
    const l1Index = Math.floor(guestCluster / this.l2EntryCount);
    if (l1Index >= this.l1EntryCount)
      throw this.corrupt(`guest cluster ${guestCluster} lies past the L1 table`);
    const oldOffsetBytes = l1Offset(this.l1, l1Index);
    if (oldOffsetBytes !== 0) this.checkL2Offset(l1Index, oldOffsetBytes);
    if (oldOffsetBytes !== 0 && l1Copied(this.l1, l1Index)) {
      await this.l2Cache.get(oldOffsetBytes);
      return oldOffsetBytes;
    }
    const oldTable = oldOffsetBytes === 0 ? undefined : Buffer.from(await this.l2Cache.get(oldOffsetBytes));
    const newCluster = await this.refcounts.allocateClusters(1);
    const newOffsetBytes = newCluster * this.clusterSizeBytes;
    await this.l2Cache.create(newOffsetBytes, oldTable);
    writeEntry(this.l1, l1Index, newOffsetBytes, true);
    this.l1DirtyFirst = Math.min(this.l1DirtyFirst, l1Index);
    this.l1DirtyLast = Math.max(this.l1DirtyLast, l1Index);
    if (oldOffsetBytes !== 0) this.deferFree(oldOffsetBytes / this.clusterSizeBytes, 1);
    return newOffsetBytes;
  }

  /** Sets L2 entry `l2Index` of the cached table at `l2OffsetBytes` (re-fetched: it may have been evicted). */
  async setL2Entry(
    l2OffsetBytes: number,
    l2Index: number,
    update: (table: Buffer, index: number) => void,
  ): Promise<void> {
    const table = this.l2Cache.peek(l2OffsetBytes) ?? (await this.l2Cache.get(l2OffsetBytes));
    update(table, l2Index);
    this.l2Cache.markDirty(l2OffsetBytes);
  }

  /** An update that maps the entry to a whole data cluster (every subcluster allocated with extended L2). */
  entryNormal(hostOffsetBytes: number): (table: Buffer, index: number) => void {
    if (!this.extendedL2) return (table, index) => writeEntry(table, index, hostOffsetBytes, true);
    return (table, index) => writeExtendedEntry(table, index, hostOffsetBytes, true, ALL_SUBCLUSTERS, 0);
  }

  /** Preallocation: the host cluster is attached but (with extended L2, as qemu does) no subcluster is marked allocated. */
  entryPreallocated(hostOffsetBytes: number): (table: Buffer, index: number) => void {
    if (!this.extendedL2) return this.entryNormal(hostOffsetBytes);
    return (table, index) => writeExtendedEntry(table, index, hostOffsetBytes, true, 0, 0);
  }

  /** An update that makes the entry read as zeros, keeping `hostOffsetBytes` (0: none). */
  entryZero(hostOffsetBytes: number, copied: boolean): (table: Buffer, index: number) => void {
    if (!this.extendedL2) return (table, index) => writeEntry(table, index, hostOffsetBytes, copied, true);
    return (table, index) => writeExtendedEntry(table, index, hostOffsetBytes, copied, 0, ALL_SUBCLUSTERS);
  }

  entryUnallocated(): (table: Buffer, index: number) => void {
    if (!this.extendedL2) return (table, index) => clearEntry(table, index);
    return (table, index) => writeExtendedEntry(table, index, 0, false, 0, 0);
  }

  entryCompressed(hostOffsetBytes: number, lengthBytes: number): (table: Buffer, index: number) => void {
    if (!this.extendedL2)
      return (table, index) =>
        writeCompressedEntry(table, index, this.clusterBits, hostOffsetBytes, lengthBytes);
    return (table, index) => {
      writeExtendedEntry(table, index, 0, false, 0, 0);
      writeCompressedEntry(table, index * 2, this.clusterBits, hostOffsetBytes, lengthBytes);
    };
  }

  /** An update that only sets or clears COPIED (the zero flag and subcluster bitmaps stay). */
  entryCopied(
    hostOffsetBytes: number,
    copied: boolean,
    zeroFlag: boolean,
  ): (table: Buffer, index: number) => void {
    if (!this.extendedL2)
      return (table, index) => writeEntry(table, index, hostOffsetBytes, copied, zeroFlag);
    return (table, index) => writeEntry(table, index * 2, hostOffsetBytes, copied, false);
  }

  /** Drops the reference `mapping` holds once the entry that named it is on disk (at the next flush). */
  releaseMapping(mapping: L2Mapping): void {
    // Clusters in an external data file have no refcounts to drop.
    if (this.hasDataFile && mapping.kind !== 'compressed') return;
    if (mapping.hostOffsetBytes % 512 !== 0 && mapping.kind !== 'compressed') return;
    if (mapping.kind === 'normal' || mapping.kind === 'zero-alloc') {
      this.deferFree(mapping.hostOffsetBytes / this.clusterSizeBytes, 1);
    } else if (mapping.kind === 'compressed') {
      const firstCluster = Math.floor(mapping.hostOffsetBytes / this.clusterSizeBytes);
      const lastCluster = Math.floor(
        (mapping.hostOffsetBytes + mapping.compressedSizeBytes - 1) / this.clusterSizeBytes,
      );
      this.deferFree(firstCluster, lastCluster - firstCluster + 1);
    }
  }

  private deferFree(firstCluster: number, clusterCount: number): void {
    const last = this.pendingFrees[this.pendingFrees.length - 1];
    if (last && last.firstCluster + last.clusterCount === firstCluster) last.clusterCount += clusterCount;
    else this.pendingFrees.push({ firstCluster, clusterCount });
  }

  /** Rewrites a header field in place (8 bytes unless `widthBytes` is 4). */
  async writeHeaderField(offsetBytes: number, value: bigint | number, widthBytes: 4 | 8 = 8): Promise<void> {
    const field = Buffer.alloc(widthBytes);
    if (widthBytes === 8) field.writeBigUInt64BE(BigInt(value));
    else field.writeUInt32BE(Number(value));
    await this.file.write(offsetBytes, field);
  }

  /**
   * Makes every completed write durable in crash-safe order: data and refcount blocks, sync, L2 tables, sync,
   * L1 entries, sync; only then are dropped references freed (refcount decrements written, synced).
   */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    // Guest data in an external data file is durable before any table that names it.
    await this.dataFile?.sync();
    await this.refcounts.flush();
    await this.file.sync();
    if (this.l2Cache.hasDirty()) {
      await this.l2Cache.flush();
      await this.file.sync();
    }
    if (this.l1DirtyLast >= 0) {
      const first = this.l1DirtyFirst;
      const last = this.l1DirtyLast;
      this.l1DirtyFirst = Number.POSITIVE_INFINITY;
      this.l1DirtyLast = -1;
      await this.file.write(
        this.header.l1TableOffsetBytes + first * 8,
        this.l1.subarray(first * 8, (last + 1) * 8),
      );
      await this.file.sync();
    }
    if (this.pendingFrees.length > 0) {
      const frees = this.pendingFrees;
      this.pendingFrees = [];
      for (const { firstCluster, clusterCount } of frees) {
        for (let index = 0; index < clusterCount; index++) {
          const clusterIndex = firstCluster + index;
          if ((await this.refcounts.get(clusterIndex)) === 0) continue;
          await this.refcounts.free(clusterIndex, 1);
          if ((await this.refcounts.get(clusterIndex)) === 0)
            this.l2Cache.drop(clusterIndex * this.clusterSizeBytes);
        }
      }
      await this.refcounts.flush();
      await this.file.sync();
    }
  }
}
