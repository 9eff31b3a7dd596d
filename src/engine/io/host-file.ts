// Positional I/O on one host file: the only place the engine touches node:fs for image bytes.
// Every format driver reads and writes its file through a HostFile, so tests can substitute a
// failing or crash-simulating implementation (see test/unit/engine/io/) without touching drivers.

import { constants as fsConstants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { ImageIoError, NotFoundError, PermissionError } from '../errors.ts';
import { NativeCallError, nativeFileOps, nativeFileOpsExpected } from './native.ts';

/** Where the file system can say which ranges hold data, a driver asks instead of reading zeros. */
export interface HostFile {
  readonly path: string;
  readonly isReadOnly: boolean;
  /** Reads up to `buffer.length` bytes at `offsetBytes`; returns the count read (short only at EOF). */
  read(offsetBytes: number, buffer: Uint8Array): Promise<number>;
  /**
   * Reads a prefix of [offsetBytes, offsetBytes + buffer.length) at once, as far as the host page cache
   * holds it, never waiting for the disk; returns the bytes read (0: nothing without waiting, or the
   * file is closed). Lets a server skip the thread-pool round trip for bytes already in memory.
   */
  readCached?(offsetBytes: number, buffer: Uint8Array): number;
  /** Writes all of `data` at `offsetBytes`, extending the file if needed. */
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  sizeBytes(): Promise<number>;
  truncate(sizeBytes: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  sync(): Promise<void>;
  /** Deallocates a range so it reads as zeros; false when the file system can't. */
  punchHole?(offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /** Allocates a range without writing it (fallocate mode 0); false when the file system can't. */
  allocate?(offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /** SEEK_DATA: the first offset >= `offsetBytes` that holds data, or null when none does before EOF. */
  seekData?(offsetBytes: number): Promise<number | null>;
  /** SEEK_HOLE: the first offset >= `offsetBytes` in a hole (EOF counts as a hole). */
  seekHole?(offsetBytes: number): Promise<number>;
  /** Zeroes a range keeping it allocated (FALLOC_FL_ZERO_RANGE); false when the file system can't. */
  zeroRange?(offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /** Bytes the file occupies on disk (st_blocks * 512): qemu-img's `actual-size`. */
  allocatedBytes?(): Promise<number>;
  close(): Promise<void>;
}

export interface OpenHostFileOptions {
  readOnly: boolean;
  /** Create the file (failing if it exists unless `truncate`). */
  create?: boolean;
  truncate?: boolean;
  /**
   * Start writing dirty pages back (without waiting) each time this many bytes have been written
   * since the last start, so a long stream of writes (convert's target) is mostly on disk by the
   * time sync() asks for all of it. Ordering and durability still come from sync() alone.
   */
  writebackEveryBytes?: number;
  /**
   * qemu's cache=unsafe (`convert -t unsafe`): sync() does nothing, so nothing written is durable
   * and a crash may leave any mix of old and new blocks. Only for a caller that asked for it.
   */
  skipSync?: boolean;
}

function errnoOf(err: unknown): string | undefined {
  return typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : undefined;
}

/** HostFile on a node:fs FileHandle. The optional native extras (seek, punch) are present only where io/native.ts is expected to load. */
export class NodeHostFile implements HostFile {
  readonly path: string;
  readonly isReadOnly: boolean;
  readonly handle: FileHandle;
  readonly seekData?: (offsetBytes: number) => Promise<number | null>;
  readonly seekHole?: (offsetBytes: number) => Promise<number>;
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;
  readonly punchHole?: (offsetBytes: number, lengthBytes: number) => Promise<boolean>;
  readonly zeroRange?: (offsetBytes: number, lengthBytes: number) => Promise<boolean>;
  readonly allocate?: (offsetBytes: number, lengthBytes: number) => Promise<boolean>;
  private readonly writebackEveryBytes: number;
  private readonly startWriteback?: (offsetBytes: number, lengthBytes: number) => Promise<boolean>;
  /** Bytes written, and the range they span, since writeback was last started. */
  private unkickedBytes = 0;
  private unkickedStart = Number.POSITIVE_INFINITY;
  private unkickedEnd = 0;
  /** The writeback start in flight (close waits for it: the worker thread still uses the fd). */
  private kick: Promise<unknown> | undefined;

  /** qemu's cache=unsafe: sync() returns at once (see OpenHostFileOptions.skipSync). */
  private readonly skipSync: boolean;

  private constructor(
    path: string,
    handle: FileHandle,
    isReadOnly: boolean,
    writebackEveryBytes = 0,
    skipSync = false,
  ) {
    this.path = path;
    this.handle = handle;
    this.isReadOnly = isReadOnly;
    this.writebackEveryBytes = isReadOnly || skipSync ? 0 : writebackEveryBytes;
    this.skipSync = skipSync;
    if (!nativeFileOpsExpected()) return;
    // The FFI loads on the first native call, not here (see nativeFileOpsExpected). Should it then
    // fail to load, each call answers as a file system without the extras would: data up to EOF,
    // no hole before it, nothing punched, zeroed or allocated, no writeback started.
    // The calls are synchronous: lseek and fallocate on a local file return in microseconds, and
    // positional reads and writes elsewhere do not depend on the file position lseek moves.
    const fd = handle.fd;
    const seekFailed = (err: unknown, offsetBytes: number): ImageIoError =>
      new ImageIoError({
        file: path,
        offsetBytes,
        errno: err instanceof NativeCallError ? String(err.errnoNumber) : undefined,
        message: `lseek at offset ${offsetBytes} failed`,
        cause: err,
      });
    this.seekData = async (offsetBytes) => {
      const native = nativeFileOps();
      if (!native) return offsetBytes < (await this.sizeBytes()) ? offsetBytes : null;
      try {
        return native.seekData(fd, offsetBytes);
      } catch (err) {
        throw seekFailed(err, offsetBytes);
      }
    };
    this.seekHole = async (offsetBytes) => {
      const native = nativeFileOps();
      if (!native) return Math.max(offsetBytes, await this.sizeBytes());
      try {
        return native.seekHole(fd, offsetBytes) ?? offsetBytes;
      } catch (err) {
        throw seekFailed(err, offsetBytes);
      }
    };
    // The fd is looked up per call: a closed FileHandle reports -1, so a late call reads nothing.
    // Without the FFI nothing counts as cached: 0 sends the whole read through the thread pool.
    this.readCached = (offsetBytes, buffer) => {
      const native = nativeFileOps();
      return native && handle.fd >= 0 ? native.readNoWait(handle.fd, offsetBytes, buffer) : 0;
    };
    if (isReadOnly) return;
    this.startWriteback = async (offsetBytes, lengthBytes) =>
      (await nativeFileOps()?.startWriteback(fd, offsetBytes, lengthBytes)) ?? false;
    this.punchHole = async (offsetBytes, lengthBytes) =>
      nativeFileOps()?.punchHole(fd, offsetBytes, lengthBytes) ?? false;
    this.zeroRange = async (offsetBytes, lengthBytes) =>
      nativeFileOps()?.zeroRange(fd, offsetBytes, lengthBytes) ?? false;
    this.allocate = async (offsetBytes, lengthBytes) =>
      nativeFileOps()?.allocate(fd, offsetBytes, lengthBytes) ?? false;
  }

  /** Opens `path`; throws NotFoundError, PermissionError or ImageIoError. */
  static async open(path: string, options: OpenHostFileOptions): Promise<NodeHostFile> {
    let flags: number;
    if (options.readOnly) flags = fsConstants.O_RDONLY;
    else if (options.create)
      flags =
        fsConstants.O_RDWR |
        fsConstants.O_CREAT |
        (options.truncate ? fsConstants.O_TRUNC : fsConstants.O_EXCL);
    else flags = fsConstants.O_RDWR;
    try {
      const handle = await open(path, flags, 0o644);
      return new NodeHostFile(path, handle, options.readOnly, options.writebackEveryBytes, options.skipSync);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === 'ENOENT') throw new NotFoundError({ file: path, cause: err });
      if (errno === 'EACCES' || errno === 'EROFS' || errno === 'EPERM') {
        throw new PermissionError({
          file: path,
          message: `cannot open ${options.readOnly ? 'for reading' : 'for writing'} (${errno})`,
          cause: err,
        });
      }
      if (errno === 'EEXIST')
        throw new ImageIoError({ file: path, errno, message: 'File exists', cause: err });
      throw new ImageIoError({
        file: path,
        errno,
        message: `open failed (${errno ?? 'unknown'})`,
        cause: err,
      });
    }
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<number> {
    let done = 0;
    try {
      while (done < buffer.length) {
        const { bytesRead } = await this.handle.read(buffer, done, buffer.length - done, offsetBytes + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      const errno = errnoOf(err);
      throw new ImageIoError({
        file: this.path,
        offsetBytes,
        lengthBytes: buffer.length,
        errno,
        message: `read of ${buffer.length} bytes at offset ${offsetBytes} failed (${errno ?? 'unknown'})`,
        cause: err,
      });
    }
    return done;
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (this.isReadOnly) throw new PermissionError({ file: this.path, message: 'file is open read-only' });
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, data.length - done, offsetBytes + done);
        done += bytesWritten;
      }
    } catch (err) {
      const errno = errnoOf(err);
      throw new ImageIoError({
        file: this.path,
        offsetBytes,
        lengthBytes: data.length,
        errno,
        message: `write of ${data.length} bytes at offset ${offsetBytes} failed (${errno ?? 'unknown'})`,
        cause: err,
      });
    }
    if (this.writebackEveryBytes > 0) this.noteWritten(offsetBytes, data.length);
  }

  private noteWritten(offsetBytes: number, lengthBytes: number): void {
    this.unkickedBytes += lengthBytes;
    this.unkickedStart = Math.min(this.unkickedStart, offsetBytes);
    this.unkickedEnd = Math.max(this.unkickedEnd, offsetBytes + lengthBytes);
    if (this.unkickedBytes < this.writebackEveryBytes || this.kick || !this.startWriteback) return;
    const start = this.unkickedStart;
    const length = this.unkickedEnd - start;
    this.unkickedBytes = 0;
    this.unkickedStart = Number.POSITIVE_INFINITY;
    this.unkickedEnd = 0;
    // A hint: failure changes nothing (sync() still writes everything back and reports errors).
    this.kick = this.startWriteback(start, length)
      .catch(() => false)
      .finally(() => {
        this.kick = undefined;
      });
  }

  async sizeBytes(): Promise<number> {
    const stat = await this.handle.stat();
    return stat.size;
  }

  /** Bytes the file occupies on disk (st_blocks * 512): qemu-img's `actual-size`. */
  async allocatedBytes(): Promise<number> {
    const stat = await this.handle.stat();
    return stat.blocks * 512;
  }

  async truncate(sizeBytes: number): Promise<void> {
    try {
      await this.handle.truncate(sizeBytes);
    } catch (err) {
      const errno = errnoOf(err);
      throw new ImageIoError({
        file: this.path,
        offsetBytes: sizeBytes,
        errno,
        message: `truncate to ${sizeBytes} bytes failed (${errno ?? 'unknown'})`,
        cause: err,
      });
    }
  }

  async sync(): Promise<void> {
    if (this.isReadOnly || this.skipSync) return;
    try {
      await this.handle.datasync();
    } catch (err) {
      const errno = errnoOf(err);
      throw new ImageIoError({
        file: this.path,
        errno,
        message: `fdatasync failed (${errno ?? 'unknown'})`,
        cause: err,
      });
    }
  }

  async close(): Promise<void> {
    await this.kick;
    await this.handle.close();
  }
}

/** Reads exactly `lengthBytes` at `offsetBytes`, zero-filling past EOF (holes and short tails read as zeros). */
export async function readZeroFilled(
  file: HostFile,
  offsetBytes: number,
  lengthBytes: number,
): Promise<Buffer> {
  const buffer = Buffer.alloc(lengthBytes);
  await file.read(offsetBytes, buffer);
  return buffer;
}
