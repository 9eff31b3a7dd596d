// A block device built from a guest-offset -> host-offset map, the shape bochs, cloop, qed, parallels,
// vhdx, qcow (v1), dmg and cow share: a driver answers "what backs this range" and the base class does
// reads (data, zeros, backing fall-through, driver-decoded chunks), block status, and allocating writes
// (allocate a zeroed unit at EOF, copy the backing's bytes in, write the data, then commit the table).

import type { BlockDevice, Extent, ImageInfo, WriteOptions, WriteZeroesOptions } from '../../block-device.ts';
import { PermissionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { actualSizeOf } from './binary.ts';

/** What backs one run of guest bytes starting at the offset asked about. `lengthBytes` >= 1. */
export type RangeMapping =
  | { kind: 'data'; lengthBytes: number; hostOffsetBytes: number }
  | { kind: 'zero'; lengthBytes: number }
  | { kind: 'unallocated'; lengthBytes: number }
  /** Bytes the driver decodes itself (compressed chunks): `read` fills a buffer of the run's first bytes. */
  | { kind: 'decoded'; lengthBytes: number; read: (buffer: Uint8Array) => Promise<void> };

/**
 * A run of `lengthBytes` guest bytes inside a unit the driver decodes whole (a compressed block,
 * chunk or cluster): `decode` returns the unit's plain bytes, the run starts `offsetInUnitBytes` in.
 */
export function decodedRange(
  lengthBytes: number,
  offsetInUnitBytes: number,
  decode: () => Promise<Uint8Array>,
): RangeMapping {
  return {
    kind: 'decoded',
    lengthBytes,
    read: async (buffer) => {
      const plain = await decode();
      buffer.set(plain.subarray(offsetInUnitBytes, offsetInUnitBytes + buffer.length));
    },
  };
}

/**
 * Reports a backing file name the image stores verbatim (qcow, qed, cow) as qemu's info does: the same
 * text as the name and the full name. Nothing when there is no backing file.
 */
export function reportBackingName(info: ImageInfo, name: string | undefined): void {
  if (name === undefined) return;
  info.backingFilename = name;
  info.fullBackingFilename = name;
}

/** Largest buffer the base class allocates for one copy step (backing copy-in, zero writes). */
export const COPY_CHUNK_BYTES = 1024 * 1024;
/** Most bytes one batched allocation covers (bounds the lookups and reservations done at once). */
const MAX_NEW_UNITS_BYTES = 64 * 1024 * 1024;

const SHARED_ZEROS = new Uint8Array(COPY_CHUNK_BYTES);

/** Reads `buffer.length` bytes at `offsetBytes` from `file`, zero-filling anything past EOF. */
export async function readHostZeroFilled(
  file: HostFile,
  offsetBytes: number,
  buffer: Uint8Array,
): Promise<void> {
  const count = await file.read(offsetBytes, buffer);
  if (count < buffer.length) buffer.fill(0, count);
}

/** Reads a range no layer of this image stores: the backing file's bytes (zeros past its end), else zeros. */
export async function readFromBacking(
  backing: BlockDevice | undefined,
  offsetBytes: number,
  buffer: Uint8Array,
): Promise<void> {
  if (!backing || offsetBytes >= backing.sizeBytes) {
    buffer.fill(0);
    return;
  }
  const inBacking = Math.min(buffer.length, backing.sizeBytes - offsetBytes);
  await backing.read(offsetBytes, buffer.subarray(0, inBacking));
  buffer.fill(0, inBacking);
}

/**
 * Appends a block-status extent, merged into the last one when it continues it: the same flags, and
 * either no host bytes on both or the next host bytes of the same file.
 */
export function appendExtent(extents: Extent[], extent: Extent): void {
  const last = extents[extents.length - 1];
  const contiguous =
    last !== undefined &&
    last.allocated === extent.allocated &&
    last.zero === extent.zero &&
    last.data === extent.data &&
    last.compressed === extent.compressed &&
    last.hostFile === extent.hostFile &&
    (last.hostOffsetBytes === undefined
      ? extent.hostOffsetBytes === undefined
      : last.hostOffsetBytes + last.lengthBytes === extent.hostOffsetBytes);
  if (contiguous) last.lengthBytes += extent.lengthBytes;
  else extents.push(extent);
}

export interface MappedDeviceInit {
  formatName: string;
  path: string;
  file: HostFile;
  sizeBytes: number;
  isReadOnly: boolean;
  backing?: BlockDevice | undefined;
  preferredBlockSizeBytes?: number;
}

/**
 * Base class for map-based formats. Subclasses implement `mapRange` (and extend `info` with what their
 * format adds); writable ones implement
 * `allocationUnitBytes`, `reserveUnit` and `commitUnit`, and `flushMetadata` when they cache tables.
 */
export abstract class MappedDevice implements BlockDevice {
  readonly formatName: string;
  readonly path: string;
  readonly file: HostFile;
  readonly isReadOnly: boolean;
  readonly backing: BlockDevice | undefined;
  readonly preferredBlockSizeBytes: number;
  protected currentSizeBytes: number;
  private closed = false;
  /** Tail of the queue that serializes mutations (allocation reads and then extends shared state). */
  private mutationTail: Promise<unknown> = Promise.resolve();

  constructor(init: MappedDeviceInit) {
    this.formatName = init.formatName;
    this.path = init.path;
    this.file = init.file;
    this.currentSizeBytes = init.sizeBytes;
    this.isReadOnly = init.isReadOnly;
    this.backing = init.backing;
    this.preferredBlockSizeBytes = init.preferredBlockSizeBytes ?? 512;
  }

  get sizeBytes(): number {
    return this.currentSizeBytes;
  }

  /**
   * What backs [offsetBytes, offsetBytes + maxLengthBytes); the answer may cover less (never 0 bytes).
   * With `joinRuns` (reads and block status) a driver may answer for several units at once: a run of
   * unallocated or zero units, or of data units that lie back to back in the file, so one pread or one
   * extent covers them. Without it (the write paths) a data or unallocated answer stays in one unit.
   */
  protected abstract mapRange(
    offsetBytes: number,
    maxLengthBytes: number,
    joinRuns?: boolean,
  ): Promise<RangeMapping>;

  /** What every format reports: its name, the file, the guest size and the host bytes used. */
  async info(): Promise<ImageInfo> {
    return {
      format: this.formatName,
      filename: this.path,
      virtualSizeBytes: this.sizeBytes,
      actualSizeBytes: await actualSizeOf(this.file),
    };
  }

  /** Size of the unit a write allocates (a cluster, a block); 0 when the format is read-only. */
  protected allocationUnitBytes(): number {
    return 0;
  }

  /** Reserves host space for unit `unitIndex`; the space must read as zeros. Returns its host offset. */
  protected reserveUnit(_unitIndex: number): Promise<number> {
    throw new UnsupportedError({ format: this.formatName, feature: 'write' });
  }

  /** Points the map at the unit's host bytes, once they are written (data before metadata). */
  protected commitUnit(_unitIndex: number, _hostOffsetBytes: number): Promise<void> {
    throw new UnsupportedError({ format: this.formatName, feature: 'write' });
  }

  /**
   * Marks a whole unallocated unit as reading zeros without storing data (over a backing file);
   * false when the format has no such state (the caller then writes zeros).
   */
  protected zeroUnallocatedUnit(_unitIndex: number): Promise<boolean> {
    return Promise.resolve(false);
  }

  /** Writes cached or pending metadata (tables, headers); called by flush and close. */
  protected flushMetadata(): Promise<void> {
    return Promise.resolve();
  }

  /** Releases driver state after the final flush. */
  protected closeMetadata(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * True when consecutive reserveUnit calls return back-to-back host space (formats that append whole
   * units at the end of the file): a write covering several new units then reaches the file in one call.
   */
  protected reservesContiguousUnits(): boolean {
    return false;
  }

  private async mapClamped(
    offsetBytes: number,
    maxLengthBytes: number,
    joinRuns = false,
  ): Promise<RangeMapping> {
    const mapping = await this.mapRange(offsetBytes, maxLengthBytes, joinRuns);
    const lengthBytes = Math.max(1, Math.min(mapping.lengthBytes, maxLengthBytes));
    return lengthBytes === mapping.lengthBytes ? mapping : { ...mapping, lengthBytes };
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const mapping = await this.mapClamped(offsetBytes + done, buffer.length - done, true);
      const part = buffer.subarray(done, done + mapping.lengthBytes);
      if (mapping.kind === 'data') await readHostZeroFilled(this.file, mapping.hostOffsetBytes, part);
      else if (mapping.kind === 'zero') part.fill(0);
      else if (mapping.kind === 'decoded') await mapping.read(part);
      else await this.readUnallocated(offsetBytes + done, part);
      done += mapping.lengthBytes;
    }
  }

  /** Reads an unallocated range: the backing file's bytes (zeros past its end), else zeros. */
  protected readUnallocated(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    return readFromBacking(this.backing, offsetBytes, buffer);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    let done = 0;
    // Bounded per call (callers loop): neither a fragmented map nor a huge sparse one makes one call
    // build an unbounded extent list or run an unbounded number of lookups.
    for (let lookups = 0; done < lengthBytes && extents.length < 4096 && lookups < 65536; lookups++) {
      const at = offsetBytes + done;
      const mapping = await this.mapClamped(at, lengthBytes - done, true);
      const extent: Extent = {
        offsetBytes: at,
        lengthBytes: mapping.lengthBytes,
        allocated: mapping.kind !== 'unallocated',
        zero: mapping.kind === 'zero' || (mapping.kind === 'unallocated' && !this.backing),
        data: mapping.kind === 'data' || mapping.kind === 'decoded',
      };
      if (mapping.kind === 'data') {
        extent.hostOffsetBytes = mapping.hostOffsetBytes;
        extent.hostFile = this.path;
      }
      if (mapping.kind === 'decoded') extent.compressed = true;
      appendExtent(extents, extent);
      done += mapping.lengthBytes;
    }
    return extents;
  }

  private requireWritable(): void {
    if (this.isReadOnly)
      throw new PermissionError({ file: this.path, message: 'write refused: the image is open read-only' });
    if (this.allocationUnitBytes() === 0)
      throw new UnsupportedError({ format: this.formatName, feature: 'write' });
  }

  /**
   * Runs `task` after every earlier mutation has finished: concurrent writers (convert -m N, NBD
   * clients) never allocate the same unit or table twice or interleave an allocation.
   */
  protected exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.mutationTail.then(task, task);
    this.mutationTail = run.catch(() => undefined);
    return run;
  }

  write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.exclusive(() => this.writeUnlocked(offsetBytes, data, options));
  }

  /** `write` for callers already inside `exclusive`. */
  protected async writeUnlocked(
    offsetBytes: number,
    data: Uint8Array,
    _options?: WriteOptions,
  ): Promise<void> {
    this.requireWritable();
    let done = 0;
    while (done < data.length) {
      const at = offsetBytes + done;
      const mapping = await this.mapClamped(at, data.length - done);
      if (mapping.kind === 'data') {
        await this.file.write(mapping.hostOffsetBytes, data.subarray(done, done + mapping.lengthBytes));
        done += mapping.lengthBytes;
        continue;
      }
      const batchBytes = this.reservesContiguousUnits()
        ? await this.writeNewUnits(at, data.subarray(done))
        : 0;
      done += batchBytes > 0 ? batchBytes : await this.writeAllocating(at, data.subarray(done));
    }
    if (_options?.fua) await this.flushUnlocked();
  }

  /**
   * Fast path for sequential writes (convert, large NBD writes): the whole new units `data` covers from
   * the unit-aligned `offsetBytes` (unallocated without a backing file, or zero: no old content to copy
   * in) are reserved together, written with one call per host-contiguous run, then committed in guest
   * order (data before metadata, as writeAllocating). Returns the bytes consumed; 0 when the head is
   * not such a unit.
   */
  private async writeNewUnits(offsetBytes: number, data: Uint8Array): Promise<number> {
    const unitBytes = this.allocationUnitBytes();
    if (offsetBytes % unitBytes !== 0) return 0;
    const firstUnit = offsetBytes / unitBytes;
    let unitCount = 0;
    let coveredBytes = 0;
    while (coveredBytes < data.length && coveredBytes < MAX_NEW_UNITS_BYTES) {
      const at = offsetBytes + coveredBytes;
      const unitLengthBytes = Math.min(unitBytes, this.sizeBytes - at);
      if (data.length - coveredBytes < unitLengthBytes) break;
      const mapping = await this.mapClamped(at, unitLengthBytes);
      const isFresh =
        mapping.lengthBytes === unitLengthBytes &&
        (mapping.kind === 'zero' || (mapping.kind === 'unallocated' && !this.backing));
      if (!isFresh) break;
      unitCount++;
      coveredBytes += unitLengthBytes;
    }
    if (unitCount === 0) return 0;
    const hostOffsets: number[] = [];
    for (let index = 0; index < unitCount; index++)
      hostOffsets.push(await this.reserveUnit(firstUnit + index));
    for (let runStart = 0; runStart < unitCount; ) {
      let runEnd = runStart + 1;
      while (runEnd < unitCount && hostOffsets[runEnd] === hostOffsets[runEnd - 1]! + unitBytes) runEnd++;
      const runData = data.subarray(runStart * unitBytes, Math.min(runEnd * unitBytes, coveredBytes));
      await this.file.write(hostOffsets[runStart]!, runData);
      runStart = runEnd;
    }
    for (let index = 0; index < unitCount; index++)
      await this.commitUnit(firstUnit + index, hostOffsets[index]!);
    return coveredBytes;
  }

  /** Allocates the unit holding `offsetBytes`, fills it, writes `data`'s head into it; returns bytes consumed. */
  private async writeAllocating(offsetBytes: number, data: Uint8Array): Promise<number> {
    const unitBytes = this.allocationUnitBytes();
    const unitIndex = Math.floor(offsetBytes / unitBytes);
    const unitStart = unitIndex * unitBytes;
    const unitEnd = Math.min(unitStart + unitBytes, this.sizeBytes);
    const writeEnd = Math.min(offsetBytes + data.length, unitEnd);
    const hostOffsetBytes = await this.reserveUnit(unitIndex);
    // The old content of the rest of the unit (backing bytes, a zero unit, decoded bytes) is copied in
    // chunk by chunk; the reserved space already reads as zeros, so zero runs are skipped.
    await this.copyOldContent(unitStart, offsetBytes, hostOffsetBytes - unitStart);
    await this.copyOldContent(writeEnd, unitEnd, hostOffsetBytes - unitStart);
    await this.file.write(
      hostOffsetBytes + (offsetBytes - unitStart),
      data.subarray(0, writeEnd - offsetBytes),
    );
    await this.commitUnit(unitIndex, hostOffsetBytes);
    return writeEnd - offsetBytes;
  }

  private async copyOldContent(fromBytes: number, toBytes: number, hostDeltaBytes: number): Promise<void> {
    let at = fromBytes;
    while (at < toBytes) {
      const mapping = await this.mapClamped(at, Math.min(toBytes - at, COPY_CHUNK_BYTES));
      const lengthBytes = mapping.lengthBytes;
      if (
        mapping.kind === 'decoded' ||
        mapping.kind === 'data' ||
        (mapping.kind === 'unallocated' && this.backing)
      ) {
        const chunk = new Uint8Array(lengthBytes);
        await this.read(at, chunk);
        if (!isAllZero(chunk)) await this.file.write(at + hostDeltaBytes, chunk);
      }
      at += lengthBytes;
    }
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    return this.exclusive(() => this.writeZeroesUnlocked(offsetBytes, lengthBytes, options));
  }

  private async writeZeroesUnlocked(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    this.requireWritable();
    let done = 0;
    while (done < lengthBytes) {
      const at = offsetBytes + done;
      const mapping = await this.mapClamped(at, lengthBytes - done);
      const step = mapping.lengthBytes;
      const alreadyZero = mapping.kind === 'zero' || (mapping.kind === 'unallocated' && !this.backing);
      const unitBytes = this.allocationUnitBytes();
      const wholeUnit =
        mapping.kind === 'unallocated' &&
        at % unitBytes === 0 &&
        (lengthBytes - done >= unitBytes || at + (lengthBytes - done) === this.sizeBytes);
      if (!alreadyZero && wholeUnit && (await this.zeroUnallocatedUnit(at / unitBytes))) {
        done += Math.min(unitBytes, lengthBytes - done);
        continue;
      }
      if (!alreadyZero) {
        if (options?.fastOnly) throw new UnsupportedError({ format: this.formatName, feature: 'fast zero' });
        for (let written = 0; written < step; written += COPY_CHUNK_BYTES) {
          const part = Math.min(COPY_CHUNK_BYTES, step - written);
          await this.writeUnlocked(at + written, SHARED_ZEROS.subarray(0, part));
        }
      }
      done += step;
    }
    if (options?.fua) await this.flushUnlocked();
  }

  async discard(_offsetBytes: number, _lengthBytes: number): Promise<void> {
    // A hint only: these formats keep the old data, which the contract allows.
  }

  flush(): Promise<void> {
    return this.exclusive(() => this.flushUnlocked());
  }

  private async flushUnlocked(): Promise<void> {
    if (this.isReadOnly) return;
    await this.flushMetadata();
    await this.file.sync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.exclusive(async () => {
        if (!this.isReadOnly) await this.flushUnlocked();
        await this.closeMetadata();
      });
    } finally {
      await this.file.close();
      if (this.backing) await this.backing.close();
    }
  }
}

/** True when every byte of `bytes` is 0. */
export function isAllZero(bytes: Uint8Array): boolean {
  const words = bytes.byteOffset % 8 === 0 ? Math.floor(bytes.length / 8) : 0;
  if (words > 0) {
    const view = new BigUint64Array(bytes.buffer, bytes.byteOffset, words);
    for (let i = 0; i < words; i++) if (view[i] !== 0n) return false;
  }
  for (let i = words * 8; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
