// Internal snapshots: the snapshot table (parse/serialize), list, create, revert (apply), delete, and a
// read-only view of a snapshot. Refcounts rise before anything names the clusters and fall only after the
// names are gone, so a crash at any point leaves leaks, never corruption. qcow2.txt "Snapshots".

import type { BlockDevice, SnapshotInfo, SnapshotOperations } from '../../block-device.ts';
import { CorruptImageError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { decodeL2, l1Copied, l1Offset, writeEntry } from './cluster-map.ts';
import { QCOW2_MAX_L1_BYTES } from './header.ts';
import type { Qcow2Image } from './image.ts';

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

/** Reads the image's snapshot table (bounded by the file size and qemu's limits). */
export async function readSnapshotTable(image: Qcow2Image): Promise<SnapshotEntry[]> {
  const { snapshotCount, snapshotsOffsetBytes } = image.header;
  if (snapshotCount === 0) return [];
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
  // Each entry is at most 40 + extra + 2 * 65535 bytes; read no more than the file holds.
  const table = Buffer.alloc(Math.min(fileSizeBytes - snapshotsOffsetBytes, 64 * 1024 * 1024));
  await image.file.read(snapshotsOffsetBytes, table);
  return parseSnapshotTable(table, snapshotCount, image.path, snapshotsOffsetBytes).entries;
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

/** Adds `delta` to the refcount of every L2 table and data cluster an L1 table names. */
async function adjustTree(image: Qcow2Image, l1: Buffer, delta: 1 | -1): Promise<void> {
  const clusterSizeBytes = image.clusterSizeBytes;
  const fileSizeBytes = await image.file.sizeBytes();
  const checkInside = (offsetBytes: number, where: number): void => {
    if (offsetBytes >= fileSizeBytes + 64 * clusterSizeBytes) {
      throw image.corrupt(
        `snapshot tree names cluster offset ${offsetBytes} past the end of the file`,
        where >= 0 ? where : undefined,
      );
    }
  };
  const readL2 = l2ReadAhead(image, l1);
  for (let l1Index = 0; l1Index < l1.length / 8; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    checkInside(l2OffsetBytes, -1);
    if (l2OffsetBytes % clusterSizeBytes !== 0)
      throw image.corrupt(`L2 table offset ${l2OffsetBytes} is not cluster aligned`);
    const table = await readL2(l1Index);
    for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
      const mapping = image.decodeChecked(table, l2Index, l2OffsetBytes);
      if (mapping.kind !== 'unallocated' && mapping.kind !== 'zero-plain')
        checkInside(mapping.hostOffsetBytes, l2OffsetBytes + l2Index * 8);
      if (mapping.kind === 'normal' || mapping.kind === 'zero-alloc') {
        const clusterIndex = mapping.hostOffsetBytes / clusterSizeBytes;
        if (image.refcounts.adjustCached(clusterIndex, delta) === undefined)
          await image.refcounts.adjust(clusterIndex, delta);
      } else if (mapping.kind === 'compressed') {
        const first = Math.floor(mapping.hostOffsetBytes / clusterSizeBytes);
        const last = Math.floor(
          (mapping.hostOffsetBytes + mapping.compressedSizeBytes - 1) / clusterSizeBytes,
        );
        for (let clusterIndex = first; clusterIndex <= last; clusterIndex++)
          await image.refcounts.adjust(clusterIndex, delta);
      }
    }
    if ((await image.refcounts.adjust(l2OffsetBytes / clusterSizeBytes, delta)) === 0)
      image.l2Cache.drop(l2OffsetBytes);
  }
}

/** Sets COPIED on active L1/L2 entries exactly where the refcount is 1 (after refcounts changed). */
async function syncCopiedFlags(image: Qcow2Image): Promise<void> {
  const clusterSizeBytes = image.clusterSizeBytes;
  for (let l1Index = 0; l1Index < image.l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(image.l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes % clusterSizeBytes !== 0) continue;
    const l2Exclusive = (await image.refcounts.get(l2OffsetBytes / clusterSizeBytes)) === 1;
    if (l1Copied(image.l1, l1Index) !== l2Exclusive)
      writeEntry(image.l1, l1Index, l2OffsetBytes, l2Exclusive);
    const table = await image.l2Cache.get(l2OffsetBytes);
    let changed = false;
    for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
      const mapping = decodeL2(table, l2Index, image.clusterBits, image.extendedL2);
      if (mapping.kind !== 'normal' && mapping.kind !== 'zero-alloc') continue;
      if (mapping.hostOffsetBytes % clusterSizeBytes !== 0) continue;
      const clusterIndex = mapping.hostOffsetBytes / clusterSizeBytes;
      const refcount =
        image.refcounts.peekRefcount(clusterIndex) ?? (await image.refcounts.get(clusterIndex));
      const exclusive = refcount === 1;
      if (exclusive === mapping.copied) continue;
      image.entryCopied(mapping.hostOffsetBytes, exclusive, mapping.kind === 'zero-alloc')(table, l2Index);
      changed = true;
    }
    if (changed) image.l2Cache.markDirty(l2OffsetBytes);
  }
}

/** Writes `entries` as the new snapshot table, points the header at it, then frees the old table. */
async function replaceTable(image: Qcow2Image, entries: SnapshotEntry[]): Promise<void> {
  const clusterSizeBytes = image.clusterSizeBytes;
  const oldOffsetBytes = image.header.snapshotsOffsetBytes;
  const oldBytes =
    image.header.snapshotCount === 0 ? 0 : serializeSnapshotTable(await readSnapshotTable(image)).length;
  let newOffsetBytes = 0;
  if (entries.length > 0) {
    const table = serializeSnapshotTable(entries);
    const first = await image.refcounts.allocateClusters(Math.ceil(table.length / clusterSizeBytes));
    newOffsetBytes = first * clusterSizeBytes;
    await image.refcounts.flush();
    await image.file.write(newOffsetBytes, table);
  }
  await image.file.sync();
  const fields = Buffer.alloc(12);
  fields.writeUInt32BE(entries.length, 0);
  fields.writeBigUInt64BE(BigInt(newOffsetBytes), 4);
  await image.file.write(60, fields);
  await image.file.sync();
  image.header.snapshotCount = entries.length;
  image.header.snapshotsOffsetBytes = newOffsetBytes;
  if (oldBytes > 0)
    await image.refcounts.free(oldOffsetBytes / clusterSizeBytes, Math.ceil(oldBytes / clusterSizeBytes));
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
        const entries = await readSnapshotTable(image);
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
        let l1OffsetBytes = 0;
        if (image.l1.length > 0) {
          const first = await image.refcounts.allocateClusters(Math.ceil(image.l1.length / clusterSizeBytes));
          l1OffsetBytes = first * clusterSizeBytes;
          await image.file.write(l1OffsetBytes, image.l1);
        }
        await adjustTree(image, image.l1, 1);
        await syncCopiedFlags(image);
        await image.flush();
        // syncCopiedFlags cleared COPIED in the in-memory L1 only; the flush writes dirty L1 ranges, not this.
        await image.file.write(image.header.l1TableOffsetBytes, image.l1);
        await image.file.sync();
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
        await replaceTable(image, [...entries, entry]);
        await image.flush();
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
        await adjustTree(image, snapshotL1, 1);
        await image.flush();
        const oldL1 = Buffer.from(image.l1);
        image.l1.fill(0);
        snapshotL1.copy(image.l1);
        await image.file.write(image.header.l1TableOffsetBytes, image.l1);
        await image.file.sync();
        await adjustTree(image, oldL1, -1);
        await syncCopiedFlags(image);
        await image.file.write(image.header.l1TableOffsetBytes, image.l1);
        await image.flush();
      });
    },

    delete: (nameOrId) => {
      checkWritable();
      return host.exclusive(async () => {
        const entries = await readSnapshotTable(image);
        const entry = findEntry(entries, nameOrId, image.path);
        const snapshotL1 = await readL1(image, entry);
        await replaceTable(
          image,
          entries.filter((candidate) => candidate !== entry),
        );
        await adjustTree(image, snapshotL1, -1);
        if (snapshotL1.length > 0)
          await image.refcounts.free(
            entry.l1OffsetBytes / image.clusterSizeBytes,
            Math.ceil(snapshotL1.length / image.clusterSizeBytes),
          );
        await syncCopiedFlags(image);
        await image.file.write(image.header.l1TableOffsetBytes, image.l1);
        await image.flush();
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
