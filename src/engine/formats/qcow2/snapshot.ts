// Internal snapshots: the snapshot table (parse/serialize), list, create, revert (apply), delete, and a
// read-only view of a snapshot. Each change is planned here (references gained and dropped, the new
// active L1 and snapshot table) and written by metadata-commit.ts as copies switched to by one header
// write: a crash at any point leaves the old state or the new one, never a leak or a corruption,
// COPIED flags included. qcow2.txt "Snapshots".

import type { BlockDevice, SnapshotInfo, SnapshotOperations } from '../../block-device.ts';
import { CorruptImageError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import {
  compressedClusterSpan,
  l1Offset,
  OFFSET_HIGH_MASK,
  OFFSET_LOW_MASK,
  OFLAG_COMPRESSED_HIGH,
} from './cluster-map.ts';
import { QCOW2_MAX_L1_BYTES } from './header.ts';
import type { Qcow2Image } from './image.ts';
import { commitMetadata, tableReadAhead } from './metadata-commit.ts';
import { RefcountShadow } from './refcount-shadow.ts';

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

/**
 * Adds `delta` to the new refcount (`shadow`) of every L2 table and data cluster an L1 table names, a
 * data cluster once per L1 that reaches it, as qemu-img check counts. Entries are read as raw 32-bit
 * halves and runs of consecutive host clusters go to the refcount blocks in one call (adjustRun): a
 * 10 GiB image has 160 Ki entries, and an object and a cache lookup per entry was most of `snapshot
 * -c`'s time. Rejects what decodeChecked rejects, and offsets past the file. An external data file's
 * clusters have no refcounts; compressed ones count in every host cluster they touch.
 */
async function adjustTree(
  image: Qcow2Image,
  l1: Buffer,
  delta: 1 | -1,
  shadow: RefcountShadow,
): Promise<void> {
  const { clusterSizeBytes, clusterBits } = image;
  const fileSizeBytes = await image.file.sizeBytes();
  const endBytes = fileSizeBytes + 64 * clusterSizeBytes;
  const entryBytes = image.extendedL2 ? 16 : 8;
  const tableBytes = image.l2EntryCount * entryBytes;
  // Cluster index from the two halves in integer arithmetic (cluster_bits is 9..21).
  const clustersPerHighUnit = 2 ** (32 - clusterBits);
  const inClusterMask = (clusterSizeBytes - 1) >>> 0;
  const pastFile = (offsetBytes: number, where?: number): CorruptImageError =>
    image.corrupt(`snapshot tree names cluster offset ${offsetBytes} past the end of the file`, where);
  const readL2 = tableReadAhead(image, l1.length / 8, (index) => l1Offset(l1, index));
  for (let l1Index = 0; l1Index < l1.length / 8; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes >= endBytes) throw pastFile(l2OffsetBytes);
    if (l2OffsetBytes % clusterSizeBytes !== 0)
      throw image.corrupt(`L2 table offset ${l2OffsetBytes} is not cluster aligned`);
    const table = await readL2(l1Index);
    const view = new DataView(table.buffer, table.byteOffset, table.length);
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
        await shadow.adjustRun(firstCluster, clusterCount, delta);
        continue;
      }
      if (image.hasDataFile) continue;
      const offsetHigh = high & OFFSET_HIGH_MASK;
      const offsetLow = (low & OFFSET_LOW_MASK) >>> 0;
      // Offset 0 is unallocated or a plain zero cluster.
      if (offsetHigh === 0 && offsetLow === 0) continue;
      const hostOffsetBytes = offsetHigh * 2 ** 32 + offsetLow;
      if ((offsetLow & inClusterMask) !== 0 || hostOffsetBytes >= endBytes) {
        // decodeChecked words the misalignment; what is left lies past the file.
        image.decodeChecked(table, at / entryBytes, l2OffsetBytes);
        throw pastFile(hostOffsetBytes, l2OffsetBytes + at);
      }
      const clusterIndex = offsetHigh * clustersPerHighUnit + (offsetLow >>> clusterBits);
      if (runLength > 0 && clusterIndex === runFirst + runLength) {
        runLength++;
        continue;
      }
      if (runLength > 0) await shadow.adjustRun(runFirst, runLength, delta);
      runFirst = clusterIndex;
      runLength = 1;
    }
    if (runLength > 0) await shadow.adjustRun(runFirst, runLength, delta);
    await shadow.adjust(l2OffsetBytes / clusterSizeBytes, delta);
  }
}

/** Drops the reference to the clusters holding `lengthBytes` from `offsetBytes` (a table the change replaces). */
async function dropClusters(
  image: Qcow2Image,
  shadow: RefcountShadow,
  offsetBytes: number,
  lengthBytes: number,
): Promise<void> {
  if (lengthBytes > 0)
    await shadow.adjustRun(
      offsetBytes / image.clusterSizeBytes,
      Math.ceil(lengthBytes / image.clusterSizeBytes),
      -1,
    );
}

function tableOf(entries: readonly SnapshotEntry[]): { bytes: Buffer; count: number } {
  return { bytes: serializeSnapshotTable(entries), count: entries.length };
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
        // The snapshot keeps the active L1 table where it is (its bytes are what qemu would copy) and
        // the active image continues in a new copy: the tree is reached from one more L1 table.
        const shadow = new RefcountShadow(image.refcounts, image.path);
        await adjustTree(image, image.l1, 1, shadow);
        await dropClusters(image, shadow, image.header.snapshotsOffsetBytes, oldTableBytes);
        const now = Date.now();
        const numericIds = entries
          .map((entry) => Number.parseInt(entry.id, 10))
          .filter((id) => Number.isFinite(id));
        const entry: SnapshotEntry = {
          l1OffsetBytes: image.l1.length > 0 ? image.header.l1TableOffsetBytes : 0,
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
        await commitMetadata(image, {
          refcounts: shadow,
          l1: Buffer.from(image.l1),
          snapshotTable: tableOf([...entries, entry]),
        });
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
        // The old active tree and L1 lose the active image's reference, the snapshot's tree gains it;
        // the new active L1 is the snapshot's, padded with empty entries to the image's size. Dropping
        // first keeps a shared cluster's count within narrow refcounts (2 bits) on the way.
        const shadow = new RefcountShadow(image.refcounts, image.path);
        await adjustTree(image, image.l1, -1, shadow);
        await adjustTree(image, snapshotL1, 1, shadow);
        await dropClusters(image, shadow, image.header.l1TableOffsetBytes, image.l1.length);
        const l1 = Buffer.alloc(image.l1.length);
        snapshotL1.copy(l1);
        await commitMetadata(image, { refcounts: shadow, l1 });
      });
    },

    delete: (nameOrId) => {
      checkWritable();
      return host.exclusive(async () => {
        const { entries, lengthBytes: oldTableBytes } = await readSnapshotTableSized(image);
        const entry = findEntry(entries, nameOrId, image.path);
        const snapshotL1 = await readL1(image, entry);
        // The snapshot's tree and L1 lose its reference; the active L1 moves to a new copy, its COPIED
        // flags set where the active tables became sole owners.
        const shadow = new RefcountShadow(image.refcounts, image.path);
        await adjustTree(image, snapshotL1, -1, shadow);
        await dropClusters(image, shadow, entry.l1OffsetBytes, snapshotL1.length);
        await dropClusters(image, shadow, image.header.snapshotsOffsetBytes, oldTableBytes);
        await dropClusters(image, shadow, image.header.l1TableOffsetBytes, image.l1.length);
        await commitMetadata(image, {
          refcounts: shadow,
          l1: Buffer.from(image.l1),
          snapshotTable: tableOf(entries.filter((candidate) => candidate !== entry)),
        });
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
