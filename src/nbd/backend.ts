// NBD commands onto a (guarded) BlockDevice, as nbdkit's server/backend.c does for plugins: one
// export's capabilities answered once, I/O serialised where the device needs it (reads share; writes
// are exclusive unless the driver declares concurrentWrites), cached reads answered synchronously,
// detect-zeroes, chain-wide block status for `base:allocation` and
// `qemu:allocation-depth`, and engine errors mapped to NBD error values (proto.md "Error values").

import type { BlockDevice } from '../engine/block-device.ts';
import { takesConcurrentWrites } from '../engine/formats/registry.ts';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from './wire.ts';

/** One export the server offers (what `-x`, `-D`, `-r`, `--discard`, `--detect-zeroes` configure). */
export interface NbdExport {
  /** Export name clients ask for; qemu-nbd's default is the empty name. */
  name: string;
  description?: string;
  device: BlockDevice;
  /** Refuse writes even when the device is writable (`-r`). */
  readOnly?: boolean;
  /** Pass TRIM and WRITE_ZEROES' may-trim on to the device (`--discard=unmap`); otherwise TRIM is a no-op. */
  discard?: boolean;
  /** `--detect-zeroes`: all-zero writes become zero writes ('unmap' may also deallocate, with `discard`). */
  detectZeroes?: 'off' | 'on' | 'unmap';
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN (default true): every connection to this export shares `device`,
   * so a flush on one makes all acknowledged writes durable.
   */
  multiConn?: boolean;
}

/** Largest READ/WRITE payload accepted (the protocol's customary 32 MiB maximum block size). */
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
/** Cap on block status descriptors in one reply (clients loop for the rest). */
export const MAX_STATUS_DESCRIPTORS = 4096;

export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const KNOWN_CONTEXTS = [CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH] as const;
export type ContextName = (typeof KNOWN_CONTEXTS)[number];

/** An NBD error value with a message for structured error chunks. */
export class NbdCommandError extends Error {
  override readonly name = 'NbdCommandError';
  readonly nbdError: number;
  constructor(nbdError: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.nbdError = nbdError;
  }
}

/** Maps an engine error (matched on `code`) to the NBD error value a client sees. */
export function toNbdError(err: unknown): NbdCommandError {
  if (err instanceof NbdCommandError) return err;
  const code = (err as { code?: unknown } | undefined)?.code;
  const errno = (err as { errno?: unknown } | undefined)?.errno;
  const message = err instanceof Error ? err.message : String(err);
  let value = NBD_EIO;
  if (code === 'VDISK_EPERM') value = NBD_EPERM;
  else if (code === 'VDISK_EINVAL') value = NBD_EINVAL;
  else if (code === 'VDISK_ENOSPC' || errno === 'ENOSPC' || errno === 'EDQUOT' || errno === 'EFBIG')
    value = NBD_ENOSPC;
  else if (code === 'VDISK_ENOTSUP') value = NBD_ENOTSUP;
  return new NbdCommandError(value, message, { cause: err });
}

/** One run of a READ reply: bytes to send, or a range that reads as zeros (an OFFSET_HOLE chunk). */
export type ReadSegment =
  | { kind: 'data'; offsetBytes: number; data: Buffer }
  | { kind: 'hole'; offsetBytes: number; lengthBytes: number };

/** A range with the chain-wide status both metadata contexts are computed from. */
export interface ChainExtent {
  offsetBytes: number;
  lengthBytes: number;
  data: boolean;
  zero: boolean;
  /** 0: no layer allocates it; 1: the top image; 2: its backing file; ... */
  depth: number;
}

/** Readers share, writers exclude: drivers need not cope with a write racing other I/O on one device. */
class SharedExclusiveLock {
  private readers = 0;
  private writer = false;
  private readonly queue: { exclusive: boolean; grant: () => void }[] = [];

  /** A shared holder could start right now (no writer holds or waits for the lock). */
  get isSharedFree(): boolean {
    return !this.writer && this.queue.length === 0;
  }

  async run<T>(exclusive: boolean, body: () => Promise<T>): Promise<T> {
    await this.acquire(exclusive);
    try {
      return await body();
    } finally {
      this.release(exclusive);
    }
  }

  private acquire(exclusive: boolean): Promise<void> {
    const free = exclusive ? !this.writer && this.readers === 0 : !this.writer && this.queue.length === 0;
    if (free) {
      if (exclusive) this.writer = true;
      else this.readers++;
      return Promise.resolve();
    }
    return new Promise((grant) => this.queue.push({ exclusive, grant }));
  }

  private release(exclusive: boolean): void {
    if (exclusive) this.writer = false;
    else this.readers--;
    while (this.queue.length > 0 && !this.writer) {
      const next = this.queue[0]!;
      if (next.exclusive) {
        if (this.readers > 0) break;
        this.writer = true;
      } else {
        this.readers++;
      }
      this.queue.shift();
      next.grant();
    }
  }
}

/** Zeros are looked for in aligned granules of this size. */
const ZERO_GRANULE_BYTES = 4096;
/** Shorter zero runs travel as data: a chunk header per few KiB would cost more than it saves. */
const MIN_HOLE_CHUNK_BYTES = 32 * 1024;
/** Most chunks one READ reply is split into; beyond that it goes as one data chunk. */
const MAX_READ_SEGMENTS = 64;
const ZERO_PROBE = Buffer.alloc(64 * 1024);

/** True when data[start, end) is all zero bytes (memcmp against a zero page; stops at the first non-zero). */
function isZeroRange(data: Buffer, start: number, end: number): boolean {
  // Most data granules have a non-zero byte near their start: a few byte loads skip the native call.
  const probeEnd = Math.min(start + 16, end);
  for (let at = start; at < probeEnd; at++) if (data[at] !== 0) return false;
  for (let at = start; at < end; at += ZERO_PROBE.length) {
    const stop = Math.min(at + ZERO_PROBE.length, end);
    if (data.compare(ZERO_PROBE, 0, stop - at, at, stop) !== 0) return false;
  }
  return true;
}

function isAllZero(data: Uint8Array): boolean {
  return isZeroRange(Buffer.from(data.buffer, data.byteOffset, data.byteLength), 0, data.byteLength);
}

/**
 * Splits bytes read at `offsetBytes` into data slices (no copies) and hole runs for a structured READ
 * reply. Zeros are found in the bytes read rather than through block status: one device call per
 * request keeps the pipeline short, and a zero run is a hole to the client however the image stores it.
 */
export function splitZeroRuns(offsetBytes: number, data: Buffer, dontFragment: boolean): ReadSegment[] {
  const runs: { start: number; end: number; zero: boolean }[] = [];
  let at = 0;
  while (at < data.length) {
    const granuleEnd =
      (Math.floor((offsetBytes + at) / ZERO_GRANULE_BYTES) + 1) * ZERO_GRANULE_BYTES - offsetBytes;
    const next = Math.min(data.length, granuleEnd);
    const zero = isZeroRange(data, at, next);
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.end = next;
    else runs.push({ start: at, end: next, zero });
    at = next;
  }
  if (runs.length === 1 && runs[0]!.zero) return [{ kind: 'hole', offsetBytes, lengthBytes: data.length }];
  const merged: { start: number; end: number; zero: boolean }[] = [];
  for (const run of runs) {
    const zero = run.zero && run.end - run.start >= MIN_HOLE_CHUNK_BYTES;
    const last = merged[merged.length - 1];
    if (last && last.zero === zero) last.end = run.end;
    else merged.push({ start: run.start, end: run.end, zero });
  }
  if (dontFragment || merged.length > MAX_READ_SEGMENTS) return [{ kind: 'data', offsetBytes, data }];
  return merged.map((run) =>
    run.zero
      ? { kind: 'hole', offsetBytes: offsetBytes + run.start, lengthBytes: run.end - run.start }
      : { kind: 'data', offsetBytes: offsetBytes + run.start, data: data.subarray(run.start, run.end) },
  );
}

/**
 * The NBD view of one export: capabilities, range checks and each command. Shared by every
 * connection to the export (its lock is what makes CAN_MULTI_CONN true).
 */
export class NbdBackend {
  readonly export: NbdExport;
  readonly sizeBytes: number;
  readonly isReadOnly: boolean;
  private readonly lock = new SharedExclusiveLock();
  /**
   * Writes wait for every other request unless the driver declares `concurrentWrites` (raw: positional
   * I/O; qcow2: serialises its own metadata updates). Flush is always exclusive, which is what orders
   * it after every write it must cover.
   */
  private readonly writesExclusive: boolean;

  constructor(exportConfig: NbdExport) {
    this.export = exportConfig;
    this.writesExclusive = !takesConcurrentWrites(exportConfig.device);
    this.sizeBytes = exportConfig.device.sizeBytes;
    this.isReadOnly = Boolean(exportConfig.readOnly) || exportConfig.device.isReadOnly;
  }

  /** Transmission flags for NBD_OPT_EXPORT_NAME / NBD_INFO_EXPORT, given what was negotiated so far. */
  transmissionFlags(structuredReplies: boolean): number {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;
    // DF only means something to a client that gets structured replies (proto.md NBD_FLAG_SEND_DF).
    if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
    if (this.isReadOnly) flags |= NBD_FLAG_READ_ONLY;
    else
      flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (this.export.multiConn ?? true) flags |= NBD_FLAG_CAN_MULTI_CONN;
    return flags;
  }

  /** Preferred I/O size for NBD_INFO_BLOCK_SIZE (at least 4 KiB, at most 2 MiB). */
  preferredBlockSizeBytes(): number {
    const preferred = this.export.device.preferredBlockSizeBytes;
    return Math.min(
      Math.max(Number.isSafeInteger(preferred) && preferred > 0 ? preferred : 4096, 4096),
      2 * 1024 * 1024,
    );
  }

  /** Throws EINVAL (ENOSPC for writes) unless [offset, offset+length) lies inside the export. */
  checkRange(offsetBytes: number, lengthBytes: number, isWrite: boolean): void {
    if (offsetBytes + lengthBytes > this.sizeBytes) {
      throw new NbdCommandError(
        isWrite ? NBD_ENOSPC : NBD_EINVAL,
        `request at offset ${offsetBytes} length ${lengthBytes} is past the end of the export (${this.sizeBytes} bytes)`,
      );
    }
  }

  private checkWritable(): void {
    if (this.isReadOnly) throw new NbdCommandError(NBD_EPERM, 'the export is read-only');
  }

  private async guard<T>(exclusive: boolean, body: () => Promise<T>): Promise<T> {
    try {
      return await this.lock.run(exclusive, body);
    } catch (err) {
      throw toNbdError(err);
    }
  }

  /**
   * Fills `buffer` (<= MAX_PAYLOAD_BYTES) with the bytes at `offsetBytes`. What the host page cache
   * holds is copied at once (device.readCached); only the rest goes through the thread pool, whose
   * hand-off and wake-up cost more than copying a cached 256 KiB does.
   */
  read(offsetBytes: number, buffer: Buffer): Promise<void> {
    this.checkRange(offsetBytes, buffer.length, false);
    const device = this.export.device;
    return this.guard(false, async () => {
      const cachedBytes = device.readCached?.(offsetBytes, buffer) ?? 0;
      if (cachedBytes < buffer.length)
        await device.read(offsetBytes + cachedBytes, buffer.subarray(cachedBytes));
    });
  }

  /**
   * The synchronous part of a READ: fills a prefix of `buffer` from the host page cache when no write
   * holds or awaits the device (a read taking no time needs no lock). Returns the bytes filled, 0..
   * buffer.length; read() the rest. Never throws: anything unusual leaves it all to read().
   */
  readNow(offsetBytes: number, buffer: Buffer): number {
    const readCached = this.export.device.readCached;
    if (!readCached || !this.lock.isSharedFree || offsetBytes + buffer.length > this.sizeBytes) return 0;
    try {
      return readCached(offsetBytes, buffer);
    } catch {
      return 0;
    }
  }

  write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, data.length, true);
    const detect = this.export.detectZeroes ?? 'off';
    return this.guard(this.writesExclusive, async () => {
      if (detect !== 'off' && isAllZero(data)) {
        await this.export.device.writeZeroes(offsetBytes, data.length, {
          fua,
          mayUnmap: detect === 'unmap' && Boolean(this.export.discard),
        });
      } else {
        await this.export.device.write(offsetBytes, data, { fua });
      }
    });
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options: { fua: boolean; noHole: boolean; fastZero: boolean },
  ): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes, true);
    return this.guard(this.writesExclusive, async () => {
      try {
        await this.export.device.writeZeroes(offsetBytes, lengthBytes, {
          fua: options.fua,
          mayUnmap: !options.noHole && Boolean(this.export.discard),
          fastOnly: options.fastZero,
        });
      } catch (err) {
        // FAST_ZERO: a slow-path refusal must reach the client as ENOTSUP, whatever the driver threw.
        if (options.fastZero && (err as { code?: unknown })?.code === 'VDISK_ENOTSUP') {
          throw new NbdCommandError(NBD_ENOTSUP, 'fast zeroing is not possible here', { cause: err });
        }
        throw err;
      }
    });
  }

  /** TRIM: deallocates only with `discard` (qemu-nbd's --discard=unmap); otherwise accepted and ignored. */
  trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes, true);
    if (!this.export.discard) return Promise.resolve();
    return this.guard(this.writesExclusive, async () => {
      await this.export.device.discard(offsetBytes, lengthBytes);
      if (fua) await this.export.device.flush();
    });
  }

  /** Waits for every write already running (the lock orders it after them), then makes them durable. */
  flush(): Promise<void> {
    if (this.isReadOnly) return this.guard(true, async () => undefined);
    return this.guard(true, () => this.export.device.flush());
  }

  /** CACHE: a prefetch hint; validated, then answered without I/O (the host page cache does the rest). */
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes, false);
    return Promise.resolve();
  }

  /** Chain-wide extents for BLOCK_STATUS, at most `maxExtents` (one with REQ_ONE). */
  blockStatus(offsetBytes: number, lengthBytes: number, maxExtents: number): Promise<ChainExtent[]> {
    this.checkRange(offsetBytes, lengthBytes, false);
    return this.guard(false, () => chainStatus(this.export.device, offsetBytes, lengthBytes, maxExtents));
  }
}

/** The base:allocation flags of an extent (proto.md "base:allocation metadata context"). */
export function baseAllocationFlags(extent: ChainExtent): number {
  return (extent.data ? 0 : NBD_STATE_HOLE) | (extent.zero ? NBD_STATE_ZERO : 0);
}

/**
 * Status of [offset, offset+length) through the whole backing chain: ranges a layer leaves
 * unallocated are asked of its backing device (depth + 1). Stops after `maxExtents` merged extents;
 * a device answering with no progress ends the walk (reported as data, the safe answer).
 */
export async function chainStatus(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
  maxExtents: number,
  depth = 1,
): Promise<ChainExtent[]> {
  const out: ChainExtent[] = [];
  const push = (extent: ChainExtent): void => {
    const last = out[out.length - 1];
    if (last && last.data === extent.data && last.zero === extent.zero && last.depth === extent.depth) {
      last.lengthBytes += extent.lengthBytes;
    } else {
      out.push(extent);
    }
  };
  const end = offsetBytes + lengthBytes;
  let cursor = offsetBytes;
  while (cursor < end && out.length < maxExtents) {
    const extents = await device.blockStatus(cursor, end - cursor);
    const before = cursor;
    for (const extent of extents) {
      if (out.length >= maxExtents) break;
      if (extent.offsetBytes !== cursor || !(extent.lengthBytes > 0)) break;
      const runBytes = Math.min(extent.lengthBytes, end - cursor);
      if (extent.allocated) {
        push({ offsetBytes: cursor, lengthBytes: runBytes, data: extent.data, zero: extent.zero, depth });
      } else {
        await pushBacking(device.backing, cursor, runBytes, maxExtents - out.length, depth + 1, push);
      }
      cursor += runBytes;
    }
    if (cursor === before) {
      push({ offsetBytes: cursor, lengthBytes: end - cursor, data: true, zero: false, depth });
      cursor = end;
    }
  }
  return out;
}

async function pushBacking(
  backing: BlockDevice | undefined,
  offsetBytes: number,
  lengthBytes: number,
  maxExtents: number,
  depth: number,
  push: (extent: ChainExtent) => void,
): Promise<void> {
  const backingEnd = backing ? Math.min(backing.sizeBytes, offsetBytes + lengthBytes) : offsetBytes;
  if (backing && backingEnd > offsetBytes) {
    let covered = offsetBytes;
    for (const extent of await chainStatus(
      backing,
      offsetBytes,
      backingEnd - offsetBytes,
      maxExtents,
      depth,
    )) {
      covered += extent.lengthBytes;
      push(extent);
    }
    // chainStatus stops early at maxExtents: the remainder is reported conservatively as data.
    if (covered < backingEnd)
      push({ offsetBytes: covered, lengthBytes: backingEnd - covered, data: true, zero: false, depth });
  }
  const tail = offsetBytes + lengthBytes - Math.max(backingEnd, offsetBytes);
  if (tail > 0)
    push({
      offsetBytes: offsetBytes + lengthBytes - tail,
      lengthBytes: tail,
      data: false,
      zero: true,
      depth: 0,
    });
}
