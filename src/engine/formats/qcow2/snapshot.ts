// Internal snapshots: the snapshot table (parse/serialize), list, create, revert (apply), delete, and a
// read-only view of a snapshot. Refcounts rise before anything names the clusters and fall only after the
// names are gone, so a crash at any point leaves leaks, never corruption. qcow2.txt "Snapshots".

import type { BlockDevice, SnapshotInfo, SnapshotOperations } from '../../block-device.ts';
import { CorruptImageError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import {
  compressedClusterSpan,
  l1Copied,
  l1Offset,
  OFFSET_HIGH_MASK,
  OFFSET_LOW_MASK,
  OFLAG_COMPRESSED_HIGH,
  OFLAG_COPIED_HIGH,
  OFLAG_ZERO_LOW,
  writeEntry,
} from './cluster-map.ts';
import { QCOW2_MAX_L1_BYTES } from './header.ts';
import type { Qcow2Image } from './image.ts';
import { readRefcountEntry } from './refcount.ts';

/** qemu's QCOW_MAX_SNAPSHOTS. */
export const QCOW2_MAX_SNAPSHOTS = 65536;
const ENTRY_FIXED_BYTES = 40;
/** What qemu 7.2 writes: vm_state_size_large, disk_size, icount. */
const EXTRA_DATA_BYTES = 24;

export interface SnapshotEntry {
  l1OffsetBytes: number;
  l1EntryCount: number;
  id: string;
  name: string;
  dateSeconds: number;
  dateNanoseconds: number;
  vmClockNanoseconds: number;
  vmStateSizeBytes: number;
  /** Guest size when the snapshot was taken (extra data), when recorded. */
  diskSizeBytes?: number;
  icount?: number;
}

/** Parses `count` entries from `table`; throws CorruptImageError when they run past it. Returns entries and bytes used. */
export function parseSnapshotTable(
  table: Buffer,
  count: number,
  file: string,
  tableOffsetBytes: number,
): { entries: SnapshotEntry[]; lengthBytes: number } {
  const entries: SnapshotEntry[] = [];
  let at = 0;
  for (let index = 0; index < count; index++) {
    if (at + ENTRY_FIXED_BYTES > table.length)
      throw new CorruptImageError({
        file,
        offsetBytes: tableOffsetBytes + at,
        message: `snapshot table entry ${index} is truncated`,
      });
    const idBytes = table.readUInt16BE(at + 12);
    const nameBytes = table.readUInt16BE(at + 14);
    const extraBytes = table.readUInt32BE(at + 36);
    const end = at + ENTRY_FIXED_BYTES + extraBytes + idBytes + nameBytes;
    if (end > table.length)
      throw new CorruptImageError({
        file,
        offsetBytes: tableOffsetBytes + at,
        message: `snapshot table entry ${index} runs past the table`,
      });
    const extra = table.subarray(at + ENTRY_FIXED_BYTES, at + ENTRY_FIXED_BYTES + extraBytes);
    const textStart = at + ENTRY_FIXED_BYTES + extraBytes;
    const entry: SnapshotEntry = {
      l1OffsetBytes: Number(table.readBigUInt64BE(at)),
      l1EntryCount: table.readUInt32BE(at + 8),
      id: table.subarray(textStart, textStart + idBytes).toString('utf8'),
      name: table.subarray(textStart + idBytes, end).toString('utf8'),
      dateSeconds: table.readUInt32BE(at + 16),
      dateNanoseconds: table.readUInt32BE(at + 20),
      vmClockNanoseconds: Number(table.readBigUInt64BE(at + 24)),
      vmStateSizeBytes: table.readUInt32BE(at + 32),
    };
    if (extraBytes >= 8) entry.vmStateSizeBytes = Number(extra.readBigUInt64BE(0));
    if (extraBytes >= 16) entry.diskSizeBytes = Number(extra.readBigUInt64BE(8));
    if (extraBytes >= 24) entry.icount = Number(extra.readBigInt64BE(16));
    entries.push(entry);
    at = Math.ceil(end / 8) * 8;
  }
  return { entries, lengthBytes: at };
}

export function serializeSnapshotTable(entries: readonly SnapshotEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const id = Buffer.from(entry.id, 'utf8');
    const name = Buffer.from(entry.name, 'utf8');
    const size = Math.ceil((ENTRY_FIXED_BYTES + EXTRA_DATA_BYTES + id.length + name.length) / 8) * 8;
    const out = Buffer.alloc(size);
    out.writeBigUInt64BE(BigInt(entry.l1OffsetBytes), 0);
    out.writeUInt32BE(entry.l1EntryCount, 8);
    out.writeUInt16BE(id.length, 12);
    out.writeUInt16BE(name.length, 14);
    out.writeUInt32BE(entry.dateSeconds, 16);
    out.writeUInt32BE(entry.dateNanoseconds, 20);
    out.writeBigUInt64BE(BigInt(entry.vmClockNanoseconds), 24);
    out.writeUInt32BE(Math.min(entry.vmStateSizeBytes, 0xffffffff), 32);
    out.writeUInt32BE(EXTRA_DATA_BYTES, 36);
    out.writeBigUInt64BE(BigInt(entry.vmStateSizeBytes), 40);
    out.writeBigUInt64BE(BigInt(entry.diskSizeBytes ?? 0), 48);
    out.writeBigInt64BE(BigInt(entry.icount ?? -1), 56);
    id.copy(out, ENTRY_FIXED_BYTES + EXTRA_DATA_BYTES);
    name.copy(out, ENTRY_FIXED_BYTES + EXTRA_DATA_BYTES + id.length);
    parts.push(out);
  }
  return Buffer.concat(parts);
}

/** Bytes of snapshot table read first: a table of a few hundred entries without VM state names. */
const FIRST_TABLE_READ_BYTES = 64 * 1024;
/** Most bytes a table can take: 65536 entries of 40 + extra + two 64 KiB strings would be more, but qemu caps it. */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

/**
 * Reads the image's snapshot table (bounded by the file size and qemu's limits), and its length on
 * disk. The read starts small and grows only when the entries run past it: a table in the middle of
 * a large file must not cost a 64 MiB read on every open and command.
 */
export async function readSnapshotTableSized(
  image: Qcow2Image,
): Promise<{ entries: SnapshotEntry[]; lengthBytes: number }> {
  const { snapshotCount, snapshotsOffsetBytes } = image.header;
  if (snapshotCount === 0) return { entries: [], lengthBytes: 0 };
  const fileSizeBytes = await image.file.sizeBytes();
  if (
    snapshotCount > QCOW2_MAX_SNAPSHOTS ||
    snapshotsOffsetBytes % image.clusterSizeBytes !== 0 ||
    snapshotsOffsetBytes >= fileSizeBytes
  ) {
    throw new CorruptImageError({
      file: image.path,
      offsetBytes: 60,
      message: `snapshot table (${snapshotCount} entries at ${snapshotsOffsetBytes}) is invalid`,
    });
  }
  const limitBytes = Math.min(fileSizeBytes - snapshotsOffsetBytes, MAX_TABLE_BYTES);
  let readBytes = Math.min(limitBytes, Math.max(FIRST_TABLE_READ_BYTES, snapshotCount * 128));
  for (;;) {
    const table = Buffer.alloc(readBytes);
    await image.file.read(snapshotsOffsetBytes, table);
    try {
      return parseSnapshotTable(table, snapshotCount, image.path, snapshotsOffsetBytes);
    } catch (err) {
      // Past the end of what was read: read more, up to the limit, where it is real damage.
      if (readBytes >= limitBytes) throw err;
      readBytes = Math.min(limitBytes, readBytes * 4);
    }
  }
}

/** Reads the image's snapshot table (bounded by the file size and qemu's limits). */
export async function readSnapshotTable(image: Qcow2Image): Promise<SnapshotEntry[]> {
  return (await readSnapshotTableSized(image)).entries;
}

export function toSnapshotInfo(entry: SnapshotEntry): SnapshotInfo {
  const info: SnapshotInfo = {
    id: entry.id,
    name: entry.name,
    vmStateSizeBytes: entry.vmStateSizeBytes,
    dateSeconds: entry.dateSeconds,
    dateNanoseconds: entry.dateNanoseconds,
    vmClockNanoseconds: entry.vmClockNanoseconds,
  };
  if (entry.icount !== undefined && entry.icount >= 0) info.icount = entry.icount;
  return info;
}

async function readL1(image: Qcow2Image, entry: SnapshotEntry): Promise<Buffer> {
  const bytes = entry.l1EntryCount * 8;
  if (
    bytes > QCOW2_MAX_L1_BYTES ||
    entry.l1OffsetBytes % image.clusterSizeBytes !== 0 ||
    entry.l1OffsetBytes + bytes > (await image.file.sizeBytes())
  ) {
    throw new CorruptImageError({
      file: image.path,
      offsetBytes: entry.l1OffsetBytes,
      lengthBytes: bytes,
      message: `snapshot '${entry.name}' has an invalid L1 table`,
    });
  }
  const l1 = Buffer.alloc(bytes);
  await image.file.read(entry.l1OffsetBytes, l1);
  return l1;
}

/** L2 tables read ahead of a walk over an L1 table: a pread per table in turn left the walk idle. */
const L2_READ_AHEAD = 8;

/**
 * Reads the L2 tables `l1` names, a few ahead of the one asked for: the cached copy when the cache has
 * it (it may be newer than the file), else the file. For walks that only read the tables.
 */
function l2ReadAhead(image: Qcow2Image, l1: Buffer): (l1Index: number) => Promise<Buffer> {
  const started = new Map<number, Promise<Buffer>>();
  const start = (l1Index: number): void => {
    if (l1Index >= l1.length / 8 || started.has(l1Index)) return;
    const offsetBytes = l1Offset(l1, l1Index);
    if (offsetBytes === 0 || offsetBytes % image.clusterSizeBytes !== 0) return;
    const read = (async () => {
      const table = Buffer.alloc(image.clusterSizeBytes);
      await image.file.read(offsetBytes, table);
      return table;
    })();
    read.catch(() => undefined); // reported when awaited
    started.set(l1Index, read);
  };
  return async (l1Index) => {
    for (let ahead = 1; ahead <= L2_READ_AHEAD; ahead++) start(l1Index + ahead);
    const offsetBytes = l1Offset(l1, l1Index);
    const cached = image.l2Cache.peek(offsetBytes);
    const pending = started.get(l1Index);
    started.delete(l1Index);
    if (cached) return Buffer.from(cached);
    return pending ?? Buffer.from(await image.l2Cache.get(offsetBytes));
  };
}

/**
 * Adds `delta` to the refcount of every L2 table and data cluster an L1 table names. Entries are read
 * as raw 32-bit halves and runs of consecutive host clusters go to the refcount blocks in one call
 * (adjustRun): a 10 GiB image has 160 Ki entries, and an object and a cache lookup per entry was
 * most of `snapshot -c`'s time. Rejects what decodeChecked rejects, and offsets past the file.
 * With `clearCopied` (a new snapshot of the active tree, +1) the same walk clears COPIED in the
 * active L2 and L1 entries, as qemu's qcow2_update_snapshot_refcount does: every cluster they name
 * is shared with the snapshot now. The tables are dirty in the cache, the L1 in memory only.
 */
async function adjustTree(image: Qcow2Image, l1: Buffer, delta: 1 | -1, clearCopied = false): Promise<void> {
  const { clusterSizeBytes, clusterBits, refcounts } = image;
  const fileSizeBytes = await image.file.sizeBytes();
  const endBytes = fileSizeBytes + 64 * clusterSizeBytes;
  const entryBytes = image.extendedL2 ? 16 : 8;
  const tableBytes = image.l2EntryCount * entryBytes;
  // Cluster index from the two halves in integer arithmetic (cluster_bits is 9..21).
  const clustersPerHighUnit = 2 ** (32 - clusterBits);
  const inClusterMask = (clusterSizeBytes - 1) >>> 0;
  const pastFile = (offsetBytes: number, where?: number): CorruptImageError =>
    image.corrupt(`snapshot tree names cluster offset ${offsetBytes} past the end of the file`, where);
  const readL2 = l2ReadAhead(image, l1);
  for (let l1Index = 0; l1Index < l1.length / 8; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes >= endBytes) throw pastFile(l2OffsetBytes);
    if (l2OffsetBytes % clusterSizeBytes !== 0)
      throw image.corrupt(`L2 table offset ${l2OffsetBytes} is not cluster aligned`);
    const table = await readL2(l1Index);
    const view = new DataView(table.buffer, table.byteOffset, table.length);
    let changed = false;
    let runFirst = 0;
    let runLength = 0;
    for (let at = 0; at < tableBytes; at += entryBytes) {
      const high = view.getUint32(at);
      const low = view.getUint32(at + 4);
      if (high === 0 && low === 0) continue;
      if (high & OFLAG_COMPRESSED_HIGH) {
        const mapping = image.decodeChecked(table, at / entryBytes, l2OffsetBytes);
        if (mapping.hostOffsetBytes >= endBytes) throw pastFile(mapping.hostOffsetBytes, l2OffsetBytes + at);
        const { firstCluster, clusterCount } = compressedClusterSpan(mapping, image.clusterBits);
        await refcounts.adjustRun(firstCluster, clusterCount, delta);
        continue;
      }
      const offsetHigh = high & OFFSET_HIGH_MASK;
      const offsetLow = (low & OFFSET_LOW_MASK) >>> 0;
      if (
        offsetHigh === 0 &&
        offsetLow === 0 &&
        // Offset 0 is unallocated or a plain zero cluster, except in an external data file (as decodeChecked).
        !(image.hasDataFile && high & OFLAG_COPIED_HIGH && (image.extendedL2 || !(low & OFLAG_ZERO_LOW)))
      )
        continue;
      const hostOffsetBytes = offsetHigh * 2 ** 32 + offsetLow;
      if ((offsetLow & inClusterMask) !== 0 || hostOffsetBytes >= endBytes) {
        // decodeChecked words the misalignment; what is left lies past the file.
        image.decodeChecked(table, at / entryBytes, l2OffsetBytes);
        throw pastFile(hostOffsetBytes, l2OffsetBytes + at);
      }
      if (clearCopied && high & OFLAG_COPIED_HIGH) {
        view.setUint32(at, (high & ~OFLAG_COPIED_HIGH) >>> 0);
        changed = true;
      }
      const clusterIndex = offsetHigh * clustersPerHighUnit + (offsetLow >>> clusterBits);
      if (runLength > 0 && clusterIndex === runFirst + runLength) {
        runLength++;
        continue;
      }
      if (runLength > 0) await refcounts.adjustRun(runFirst, runLength, delta);
      runFirst = clusterIndex;
      runLength = 1;
    }
    if (runLength > 0) await refcounts.adjustRun(runFirst, runLength, delta);
    if ((await refcounts.adjust(l2OffsetBytes / clusterSizeBytes, delta)) === 0)
      image.l2Cache.drop(l2OffsetBytes);
    if (clearCopied) {
      if (l1Copied(l1, l1Index)) writeEntry(l1, l1Index, l2OffsetBytes, false);
      // The walk read a copy; the cache's table (clean: the caller flushed first) takes its bytes.
      if (changed) await installTable(image, l2OffsetBytes, table);
    }
  }
}

/**
 * Sets COPIED on active L1/L2 entries exactly where the refcount is 1 (after refcounts changed), in
 * memory: changed L2 tables are dirty in the cache, the L1 table is written by the caller. Only the
 * COPIED bit changes. The caller flushed the cache first: its tables match the file.
 */
async function syncCopiedFlags(image: Qcow2Image): Promise<void> {
  const { clusterSizeBytes, clusterBits, refcounts } = image;
  const entryBytes = image.extendedL2 ? 16 : 8;
  const tableBytes = image.l2EntryCount * entryBytes;
  const clustersPerHighUnit = 2 ** (32 - clusterBits);
  const inClusterMask = (clusterSizeBytes - 1) >>> 0;
  const { entriesPerBlock, refcountOrder } = refcounts;
  let blockFirst = 0;
  let blockEnd = 0;
  let block: Buffer | undefined;
  // DataView rather than Buffer's read/write calls, integer arithmetic, and the block in hand while
  // the clusters stay inside it: the walk runs once, mostly before V8 optimizes it.
  let blockView: DataView | undefined;
  const readL2 = l2ReadAhead(image, image.l1);
  for (let l1Index = 0; l1Index < image.l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(image.l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes % clusterSizeBytes !== 0) continue;
    const l2Exclusive = (await refcounts.get(l2OffsetBytes / clusterSizeBytes)) === 1;
    if (l1Copied(image.l1, l1Index) !== l2Exclusive)
      writeEntry(image.l1, l1Index, l2OffsetBytes, l2Exclusive);
    const table = await readL2(l1Index);
    const view = new DataView(table.buffer, table.byteOffset, table.length);
    let changed = false;
    for (let at = 0; at < tableBytes; at += entryBytes) {
      const high = view.getUint32(at);
      if (high & OFLAG_COMPRESSED_HIGH) continue;
      const offsetHigh = high & OFFSET_HIGH_MASK;
      const offsetLow = (view.getUint32(at + 4) & OFFSET_LOW_MASK) >>> 0;
      if ((offsetHigh === 0 && offsetLow === 0) || (offsetLow & inClusterMask) !== 0) continue;
      const clusterIndex = offsetHigh * clustersPerHighUnit + (offsetLow >>> clusterBits);
      if (clusterIndex < blockFirst || clusterIndex >= blockEnd) {
        // A block evicted meanwhile still holds the right counts: nothing changes them in this walk.
        const tableIndex = Math.floor(clusterIndex / entriesPerBlock);
        block = await refcounts.blockAt(tableIndex);
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
      if ((refcount === 1) === ((high & OFLAG_COPIED_HIGH) !== 0)) continue;
      view.setUint32(at, (high ^ OFLAG_COPIED_HIGH) >>> 0);
      changed = true;
    }
    if (changed) await installTable(image, l2OffsetBytes, table);
  }
}

/** Puts a changed copy of the L2 table at `l2OffsetBytes` into the cache, dirty (the cached one was clean). */
async function installTable(image: Qcow2Image, l2OffsetBytes: number, table: Buffer): Promise<void> {
  const cached = image.l2Cache.peek(l2OffsetBytes);
  if (!cached) {
    await image.l2Cache.create(l2OffsetBytes, table);
    return;
  }
  table.copy(cached);
  image.l2Cache.markDirty(l2OffsetBytes);
}

/**
 * Writes the active tables' COPIED changes (syncCopiedFlags) and syncs: the dirty L2 tables (after
 * the refcount blocks, by the cache's own order) and the whole L1 table.
 */
async function writeCopiedFlags(image: Qcow2Image): Promise<void> {
  await image.l2Cache.flush();
  await image.file.write(image.header.l1TableOffsetBytes, image.l1);
  await image.file.sync();
}

/**
 * Writes `entries` as a snapshot table in newly allocated clusters, not yet named by the header;
 * returns its offset (0 for no entries). Its refcounts are dirty in the cache: the caller syncs them
 * with the table before pointing the header at it (pointHeaderAt).
 */
async function writeTable(image: Qcow2Image, entries: readonly SnapshotEntry[]): Promise<number> {
  if (entries.length === 0) return 0;
  const table = serializeSnapshotTable(entries);
  const first = await image.refcounts.allocateClusters(Math.ceil(table.length / image.clusterSizeBytes));
  const offsetBytes = first * image.clusterSizeBytes;
  await image.file.write(offsetBytes, table);
  return offsetBytes;
}

/** Points the header at a durable snapshot table (nb_snapshots, snapshots_offset) and syncs. */
async function pointHeaderAt(image: Qcow2Image, offsetBytes: number, entryCount: number): Promise<void> {
  const fields = Buffer.alloc(12);
  fields.writeUInt32BE(entryCount, 0);
  fields.writeBigUInt64BE(BigInt(offsetBytes), 4);
  await image.file.write(60, fields);
  await image.file.sync();
  image.header.snapshotCount = entryCount;
  image.header.snapshotsOffsetBytes = offsetBytes;
}

/** Drops the reference of a snapshot table the header no longer names (refcounts dirty in the cache). */
async function freeTable(image: Qcow2Image, offsetBytes: number, lengthBytes: number): Promise<void> {
  if (lengthBytes > 0)
    await image.refcounts.free(
      offsetBytes / image.clusterSizeBytes,
      Math.ceil(lengthBytes / image.clusterSizeBytes),
    );
}

function findEntry(entries: SnapshotEntry[], nameOrId: string, path: string): SnapshotEntry {
  const entry =
    entries.find((candidate) => candidate.id === nameOrId) ??
    entries.find((candidate) => candidate.name === nameOrId);
  if (!entry)
    throw new InvalidOptionError({
      option: 'snapshot',
      value: nameOrId,
      message: `${path}: Could not find snapshot '${nameOrId}'`,
    });
  return entry;
}

export interface SnapshotHost {
  image: Qcow2Image;
  /** Runs `work` under the device's metadata lock after flushing (every in-memory change on disk first). */
  exclusive<T>(work: () => Promise<T>): Promise<T>;
  /** A read-only device over `l1` (the snapshot's tables), sharing the file and backing. */
  openView(l1: Buffer, sizeBytes: number): BlockDevice;
}

/** SnapshotOperations for an open qcow2 device. */
export function snapshotOperations(host: SnapshotHost): SnapshotOperations {
  const { image } = host;
  const checkWritable = (): void => {
    if (image.readOnly)
      throw new UnsupportedError({ format: 'qcow2', feature: 'snapshot changes on a read-only image' });
  };
  return {
    list: () => host.exclusive(async () => (await readSnapshotTable(image)).map(toSnapshotInfo)),

    create: (name) => {
      checkWritable();
      return host.exclusive(async () => {
        const { entries, lengthBytes: oldTableBytes } = await readSnapshotTableSized(image);
        if (entries.some((entry) => entry.name === name))
          throw new InvalidOptionError({
            option: 'snapshot',
            value: name,
            message: `${image.path}: a snapshot named '${name}' already exists`,
          });
        if (entries.length >= QCOW2_MAX_SNAPSHOTS)
          throw new UnsupportedError({
            format: 'qcow2',
            feature: `more than ${QCOW2_MAX_SNAPSHOTS} snapshots`,
          });
        const clusterSizeBytes = image.clusterSizeBytes;
        const oldTableOffsetBytes = image.header.snapshotsOffsetBytes;
        // Three syncs, as qemu: (1) the L1 copy, the new table and every refcount they and the shared
        // tree need; (2) COPIED cleared in the active tables, which must not claim sole ownership once
        // the snapshot is visible; (3) the header naming the new table. A cut before (3) leaves leaks.
        let l1OffsetBytes = 0;
        if (image.l1.length > 0) {
          const first = await image.refcounts.allocateClusters(Math.ceil(image.l1.length / clusterSizeBytes));
          l1OffsetBytes = first * clusterSizeBytes;
          await image.file.write(l1OffsetBytes, image.l1);
        }
        await adjustTree(image, image.l1, 1, true);
        const now = Date.now();
        const numericIds = entries
          .map((entry) => Number.parseInt(entry.id, 10))
          .filter((id) => Number.isFinite(id));
        const entry: SnapshotEntry = {
          l1OffsetBytes,
          l1EntryCount: image.l1EntryCount,
          id: String(Math.max(0, ...numericIds) + 1),
          name,
          dateSeconds: Math.floor(now / 1000),
          dateNanoseconds: (now % 1000) * 1_000_000,
          vmClockNanoseconds: 0,
          vmStateSizeBytes: 0,
          diskSizeBytes: image.header.virtualSizeBytes,
          // qemu-img snapshot -c zeroes its QEMUSnapshotInfo: no VM ran, so icount is 0, not -1 (unknown).
          icount: 0,
        };
        const tableOffsetBytes = await writeTable(image, [...entries, entry]);
        await image.refcounts.flush();
        await image.file.sync();
        await writeCopiedFlags(image);
        await pointHeaderAt(image, tableOffsetBytes, entries.length + 1);
        if (oldTableBytes > 0) {
          await freeTable(image, oldTableOffsetBytes, oldTableBytes);
          await image.flush();
        }
        return toSnapshotInfo(entry);
      });
    },

    apply: (nameOrId) => {
      checkWritable();
      return host.exclusive(async () => {
        const entry = findEntry(await readSnapshotTable(image), nameOrId, image.path);
        if (
          entry.l1EntryCount > image.l1EntryCount ||
          (entry.diskSizeBytes !== undefined && entry.diskSizeBytes !== image.header.virtualSizeBytes)
        ) {
          throw new UnsupportedError({
            format: 'qcow2',
            feature: 'reverting to a snapshot of a different size',
          });
        }
        const snapshotL1 = await readL1(image, entry);
        // The snapshot's tree gains the active image's reference (synced) before the active L1 names
        // it, with COPIED clear: every table it names is shared with the snapshot now. The old tree
        // loses that reference only after, and COPIED returns where it became sole owner last.
        await adjustTree(image, snapshotL1, 1);
        await image.refcounts.flush();
        await image.file.sync();
        const oldL1 = Buffer.from(image.l1);
        image.l1.fill(0);
        snapshotL1.copy(image.l1);
        for (let l1Index = 0; l1Index < image.l1EntryCount; l1Index++)
          if (l1Copied(image.l1, l1Index)) writeEntry(image.l1, l1Index, l1Offset(image.l1, l1Index), false);
        await image.file.write(image.header.l1TableOffsetBytes, image.l1);
        await image.file.sync();
        await adjustTree(image, oldL1, -1);
        await image.refcounts.flush();
        await image.file.sync();
        await syncCopiedFlags(image);
        await writeCopiedFlags(image);
      });
    },

    delete: (nameOrId) => {
      checkWritable();
      return host.exclusive(async () => {
        const { entries, lengthBytes: oldTableBytes } = await readSnapshotTableSized(image);
        const entry = findEntry(entries, nameOrId, image.path);
        const snapshotL1 = await readL1(image, entry);
        const oldTableOffsetBytes = image.header.snapshotsOffsetBytes;
        // Four syncs, as qemu: (1) the table without the entry, (2) the header naming it; only then
        // (3) the references the snapshot held are dropped, and (4) COPIED is set where the active
        // tables became sole owners, never before the refcounts that justify it are on disk.
        const remaining = entries.filter((candidate) => candidate !== entry);
        const tableOffsetBytes = await writeTable(image, remaining);
        if (tableOffsetBytes !== 0) {
          await image.refcounts.flush();
          await image.file.sync();
        }
        await pointHeaderAt(image, tableOffsetBytes, remaining.length);
        await freeTable(image, oldTableOffsetBytes, oldTableBytes);
        await adjustTree(image, snapshotL1, -1);
        if (snapshotL1.length > 0)
          await image.refcounts.free(
            entry.l1OffsetBytes / image.clusterSizeBytes,
            Math.ceil(snapshotL1.length / image.clusterSizeBytes),
          );
        await image.refcounts.flush();
        await image.file.sync();
        await syncCopiedFlags(image);
        await writeCopiedFlags(image);
      });
    },

    open: (nameOrId) =>
      host.exclusive(async () => {
        const entry = findEntry(await readSnapshotTable(image), nameOrId, image.path);
        return host.openView(
          await readL1(image, entry),
          entry.diskSizeBytes ?? image.header.virtualSizeBytes,
        );
      }),
  };
}
