// VHDX log replay: find the active sequence of log entries (valid signature, checksum, log GUID and
// consecutive sequence numbers from the head entry's tail to the head) and turn its data and zero
// descriptors into file patches. Spec: MS-VHDX 2.3 (Log), 2.3.3 (Log Replay). Everything is bounded by
// the log length (at most 4 GiB by the header's u32), read one 4 KiB sector at a time.

import { CorruptImageError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { readExact, u64le, viewOf } from '../common/binary.ts';
import { crc32c } from './crc32c.ts';
import { sameGuid, type VhdxHeader } from './layout.ts';

const LOG_SECTOR_BYTES = 4096;
const LOG_ENTRY_HEADER_BYTES = 64;
const DESCRIPTOR_BYTES = 32;

/** One change the log makes to the file: bytes to write, or a run of zeros. */
export type LogPatch = { offsetBytes: number; data: Uint8Array } | { offsetBytes: number; zeroBytes: number };

export interface LogReplay {
  patches: LogPatch[];
  /** The file must be at least this long afterwards (the head entry's LastFileOffset). */
  lastFileOffsetBytes: number;
}

interface ParsedEntry {
  positionBytes: number;
  lengthBytes: number;
  tailBytes: number;
  sequenceNumber: bigint;
  lastFileOffsetBytes: number;
  bytes: Uint8Array;
}

/** Reads `lengthBytes` of the circular log starting at `positionBytes` (wrapping at the end). */
async function readLog(
  file: HostFile,
  header: VhdxHeader,
  positionBytes: number,
  lengthBytes: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(lengthBytes);
  let done = 0;
  while (done < lengthBytes) {
    const at = (positionBytes + done) % header.logLengthBytes;
    const step = Math.min(lengthBytes - done, header.logLengthBytes - at);
    out.set(await readExact(file, header.logOffsetBytes + at, step, 'VHDX log'), done);
    done += step;
  }
  return out;
}

async function parseEntry(
  file: HostFile,
  header: VhdxHeader,
  positionBytes: number,
): Promise<ParsedEntry | undefined> {
  const head = await readLog(file, header, positionBytes, LOG_SECTOR_BYTES);
  const view = viewOf(head);
  if (Buffer.from(head.subarray(0, 4)).toString('latin1') !== 'loge') return undefined;
  const lengthBytes = view.getUint32(8, true);
  const tailBytes = view.getUint32(12, true);
  if (lengthBytes === 0 || lengthBytes % LOG_SECTOR_BYTES !== 0 || lengthBytes > header.logLengthBytes)
    return undefined;
  if (tailBytes % LOG_SECTOR_BYTES !== 0 || tailBytes >= header.logLengthBytes) return undefined;
  if (!sameGuid(head.subarray(32, 48), header.logGuid)) return undefined;
  const descriptorCount = view.getUint32(24, true);
  const descriptorSectors = Math.ceil(
    (LOG_ENTRY_HEADER_BYTES + descriptorCount * DESCRIPTOR_BYTES) / LOG_SECTOR_BYTES,
  );
  if (descriptorSectors * LOG_SECTOR_BYTES > lengthBytes) return undefined;
  const bytes =
    lengthBytes === LOG_SECTOR_BYTES ? head : await readLog(file, header, positionBytes, lengthBytes);
  if (view.getUint32(4, true) !== crc32c(bytes, 4)) return undefined;
  let lastFileOffsetBytes: number;
  try {
    lastFileOffsetBytes = u64le(head, 56, file.path);
  } catch {
    return undefined;
  }
  return {
    positionBytes,
    lengthBytes,
    tailBytes,
    sequenceNumber: view.getBigUint64(16, true),
    lastFileOffsetBytes,
    bytes,
  };
}

/** Decodes one entry's descriptors into patches; undefined when a descriptor or data sector disagrees. */
function entryPatches(entry: ParsedEntry, file: string): LogPatch[] | undefined {
  const view = viewOf(entry.bytes);
  const descriptorCount = view.getUint32(24, true);
  const descriptorSectors = Math.ceil(
    (LOG_ENTRY_HEADER_BYTES + descriptorCount * DESCRIPTOR_BYTES) / LOG_SECTOR_BYTES,
  );
  let dataSector = descriptorSectors;
  const patches: LogPatch[] = [];
  for (let i = 0; i < descriptorCount; i++) {
    const at = LOG_ENTRY_HEADER_BYTES + i * DESCRIPTOR_BYTES;
    const signature = Buffer.from(entry.bytes.subarray(at, at + 4)).toString('latin1');
    if (view.getBigUint64(at + 24, true) !== entry.sequenceNumber) return undefined;
    const fileOffsetBytes = u64le(entry.bytes, at + 16, file);
    if (fileOffsetBytes % LOG_SECTOR_BYTES !== 0) return undefined;
    if (signature === 'zero') {
      const zeroBytes = u64le(entry.bytes, at + 8, file);
      if (zeroBytes % LOG_SECTOR_BYTES !== 0) return undefined;
      patches.push({ offsetBytes: fileOffsetBytes, zeroBytes });
    } else if (signature === 'desc') {
      const sectorAt = dataSector * LOG_SECTOR_BYTES;
      if (sectorAt + LOG_SECTOR_BYTES > entry.lengthBytes) return undefined;
      const sector = entry.bytes.subarray(sectorAt, sectorAt + LOG_SECTOR_BYTES);
      const sectorView = viewOf(sector);
      if (Buffer.from(sector.subarray(0, 4)).toString('latin1') !== 'data') return undefined;
      const sequence =
        (BigInt(sectorView.getUint32(4, true)) << 32n) | BigInt(sectorView.getUint32(4092, true));
      if (sequence !== entry.sequenceNumber) return undefined;
      // The sector's first 8 and last 4 bytes were displaced by the data sector's own fields.
      const data = new Uint8Array(LOG_SECTOR_BYTES);
      data.set(entry.bytes.subarray(at + 8, at + 16), 0);
      data.set(sector.subarray(8, 4092), 8);
      data.set(entry.bytes.subarray(at + 4, at + 8), 4092);
      patches.push({ offsetBytes: fileOffsetBytes, data });
      dataSector++;
    } else {
      return undefined;
    }
  }
  return patches;
}

/**
 * Finds the active log sequence and returns its patches in order; undefined when the log is empty
 * (a zero log GUID or no valid entry). Throws CorruptImageError when the head's sequence is broken.
 */
export async function readLogReplay(file: HostFile, header: VhdxHeader): Promise<LogReplay | undefined> {
  if (header.logGuid.every((byte) => byte === 0) || header.logLengthBytes === 0) return undefined;
  // The log must lie inside the file before any entry buffer (up to the log length) is allocated.
  if (header.logOffsetBytes + header.logLengthBytes > (await file.sizeBytes())) {
    throw new CorruptImageError({
      file: file.path,
      offsetBytes: header.logOffsetBytes,
      lengthBytes: header.logLengthBytes,
      message: 'VHDX log region extends past the end of the file',
    });
  }
  let head: ParsedEntry | undefined;
  for (let position = 0; position < header.logLengthBytes; position += LOG_SECTOR_BYTES) {
    const entry = await parseEntry(file, header, position);
    if (entry && (!head || entry.sequenceNumber > head.sequenceNumber)) head = entry;
  }
  if (!head) return undefined;
  const sequence: ParsedEntry[] = [];
  let position = head.tailBytes;
  // Walk tail -> head; each step consumes at least one sector, so the walk is bounded by the log size.
  for (let steps = 0; steps <= header.logLengthBytes / LOG_SECTOR_BYTES; steps++) {
    const entry: ParsedEntry | undefined =
      position === head.positionBytes ? head : await parseEntry(file, header, position);
    const previous = sequence[sequence.length - 1];
    if (!entry || (previous && entry.sequenceNumber !== previous.sequenceNumber + 1n)) break;
    sequence.push(entry);
    if (entry === head) break;
    position = (position + entry.lengthBytes) % header.logLengthBytes;
  }
  if (sequence[sequence.length - 1] !== head) {
    throw new CorruptImageError({
      file: file.path,
      offsetBytes: header.logOffsetBytes + head.tailBytes,
      message: 'VHDX log sequence from the tail to the head entry is broken',
      fatal: true,
    });
  }
  const patches: LogPatch[] = [];
  for (const entry of sequence) {
    const entryPatchList = entryPatches(entry, file.path);
    if (!entryPatchList) {
      throw new CorruptImageError({
        file: file.path,
        offsetBytes: header.logOffsetBytes + entry.positionBytes,
        lengthBytes: entry.lengthBytes,
        message: 'VHDX log entry has an invalid descriptor',
        fatal: true,
      });
    }
    patches.push(...entryPatchList);
  }
  return { patches, lastFileOffsetBytes: head.lastFileOffsetBytes };
}

/** Writes the patches into the file (a read-write replay); the caller then clears the log GUID. */
export async function applyLogReplay(file: HostFile, replay: LogReplay): Promise<void> {
  const zeros = new Uint8Array(1024 * 1024);
  for (const patch of replay.patches) {
    if ('data' in patch) {
      await file.write(patch.offsetBytes, patch.data);
    } else {
      for (let done = 0; done < patch.zeroBytes; done += zeros.length) {
        await file.write(
          patch.offsetBytes + done,
          zeros.subarray(0, Math.min(zeros.length, patch.zeroBytes - done)),
        );
      }
    }
  }
  if ((await file.sizeBytes()) < replay.lastFileOffsetBytes) await file.truncate(replay.lastFileOffsetBytes);
  await file.sync();
}

/** A read-only view of a file with a log replayed in memory (vdisk's answer to a dirty read-only open). */
export class ReplayedHostFile implements HostFile {
  readonly path: string;
  readonly isReadOnly = true;
  private readonly inner: HostFile;
  private readonly replay: LogReplay;

  constructor(inner: HostFile, replay: LogReplay) {
    this.inner = inner;
    this.path = inner.path;
    this.replay = replay;
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<number> {
    const sizeBytes = await this.sizeBytes();
    const wanted = Math.max(0, Math.min(buffer.length, sizeBytes - offsetBytes));
    const count = await this.inner.read(offsetBytes, buffer.subarray(0, wanted));
    buffer.fill(0, count, wanted);
    const end = offsetBytes + wanted;
    // Later patches win: apply in log order.
    for (const patch of this.replay.patches) {
      const length = 'data' in patch ? patch.data.length : patch.zeroBytes;
      const from = Math.max(offsetBytes, patch.offsetBytes);
      const to = Math.min(end, patch.offsetBytes + length);
      if (from >= to) continue;
      if ('data' in patch)
        buffer.set(patch.data.subarray(from - patch.offsetBytes, to - patch.offsetBytes), from - offsetBytes);
      else buffer.fill(0, from - offsetBytes, to - offsetBytes);
    }
    return wanted;
  }

  write(): Promise<void> {
    return Promise.reject(new CorruptImageError({ file: this.path, message: 'read-only replayed view' }));
  }

  async sizeBytes(): Promise<number> {
    return Math.max(await this.inner.sizeBytes(), this.replay.lastFileOffsetBytes);
  }

  truncate(): Promise<void> {
    return this.write();
  }

  async sync(): Promise<void> {}

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** One 4 KiB metadata sector a log entry carries: where it goes and its new bytes. */
export interface LoggedSector {
  fileOffsetBytes: number;
  sector: Uint8Array;
}

/** Bytes a log entry of `sectorCount` data sectors takes in the log (descriptor sectors included). */
export function logEntryBytes(sectorCount: number): number {
  const descriptorSectors = Math.ceil(
    (LOG_ENTRY_HEADER_BYTES + sectorCount * DESCRIPTOR_BYTES) / LOG_SECTOR_BYTES,
  );
  return (descriptorSectors + sectorCount) * LOG_SECTOR_BYTES;
}

/**
 * Encodes a log entry (MS-VHDX 2.3.1) carrying whole 4 KiB sectors: the header and one data descriptor
 * per sector first, then the data sectors. `tailBytes` is the entry's own position, so replay applies
 * this entry alone: all its sectors or, when the entry is torn, none of them.
 */
export function encodeLogEntry(args: {
  logGuid: Uint8Array;
  sequenceNumber: bigint;
  positionBytes: number;
  sectors: readonly LoggedSector[];
  fileSizeBytes: number;
}): Uint8Array {
  const count = args.sectors.length;
  const entry = new Uint8Array(logEntryBytes(count));
  const view = viewOf(entry);
  entry.set(Buffer.from('loge', 'latin1'), 0);
  view.setUint32(8, entry.length, true);
  view.setUint32(12, args.positionBytes, true);
  view.setBigUint64(16, args.sequenceNumber, true);
  view.setUint32(24, count, true);
  entry.set(args.logGuid, 32);
  view.setBigUint64(48, BigInt(args.fileSizeBytes), true);
  view.setBigUint64(56, BigInt(args.fileSizeBytes), true);
  let data = entry.length - count * LOG_SECTOR_BYTES;
  args.sectors.forEach(({ fileOffsetBytes, sector }, index) => {
    const descriptor = LOG_ENTRY_HEADER_BYTES + index * DESCRIPTOR_BYTES;
    // The data sector's own signature and sequence halves displace the sector's first 8 and last 4
    // bytes, which the descriptor keeps instead.
    entry.set(Buffer.from('desc', 'latin1'), descriptor);
    entry.set(sector.subarray(4092, 4096), descriptor + 4);
    entry.set(sector.subarray(0, 8), descriptor + 8);
    view.setBigUint64(descriptor + 16, BigInt(fileOffsetBytes), true);
    view.setBigUint64(descriptor + 24, args.sequenceNumber, true);
    entry.set(Buffer.from('data', 'latin1'), data);
    view.setUint32(data + 4, Number(args.sequenceNumber >> 32n), true);
    entry.set(sector.subarray(8, 4092), data + 8);
    view.setUint32(data + 4092, Number(args.sequenceNumber & 0xffffffffn), true);
    data += LOG_SECTOR_BYTES;
  });
  view.setUint32(4, crc32c(entry, 4), true);
  return entry;
}
