// Linux file-system extras Node's fs lacks, called in libc through the koffi FFI: lseek(2) with
// SEEK_DATA / SEEK_HOLE (sparse maps) and fallocate(2) (punch holes, zero ranges, preallocate).
// Loaded on first use; on any other platform, or if koffi can't load, `nativeFileOps()` is undefined
// and callers fall back to plain reads, writes of zeros and zero detection.

import { createRequire } from 'node:module';

/** lseek(2) whence values (Linux, <unistd.h>). */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** fallocate(2) mode bits (<linux/falloc.h>). */
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
/** sync_file_range(2) flag: start writeback of the range's dirty pages without waiting for it. */
const SYNC_FILE_RANGE_WRITE = 2;
/** preadv2(2) flag: return EAGAIN instead of waiting for the disk (<linux/fs.h> RWF_NOWAIT). */
const RWF_NOWAIT = 0x08;
/** errno values (asm-generic/errno-base.h). */
const ENXIO = 6;

export interface NativeFileOps {
  /** First offset >= `offsetBytes` holding data; null when only a hole follows (ENXIO); throws on other errors. */
  seekData(fd: number, offsetBytes: number): number | null;
  /** First offset >= `offsetBytes` in a hole (EOF counts); null when past EOF. */
  seekHole(fd: number, offsetBytes: number): number | null;
  /** Deallocates [offset, offset+length) keeping the size; false when the file system refuses. */
  punchHole(fd: number, offsetBytes: number, lengthBytes: number): boolean;
  /** Zeroes [offset, offset+length) keeping allocation (FALLOC_FL_ZERO_RANGE); false when refused. */
  zeroRange(fd: number, offsetBytes: number, lengthBytes: number): boolean;
  /** Allocates [offset, offset+length), extending the size if needed (mode 0); false when refused. */
  allocate(fd: number, offsetBytes: number, lengthBytes: number): boolean;
  /**
   * Starts writeback of [offset, offset+length) (length 0: to EOF) on a koffi worker thread, as
   * sync_file_range(SYNC_FILE_RANGE_WRITE); resolves true when started. A hint only: it makes
   * nothing durable (sync does) and never reorders anything the kernel's flusher could not.
   */
  startWriteback(fd: number, offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /**
   * Reads into `buffer` what the page cache holds from `offsetBytes` on, without waiting for the disk
   * (preadv2 with RWF_NOWAIT); returns the bytes read: short at EOF or where the cached run ends, 0
   * when nothing is cached there or on any error (the caller's ordinary read then reports it).
   */
  readNoWait(fd: number, offsetBytes: number, buffer: Uint8Array): number;
}

/** Thrown when lseek fails for a reason other than "no more data" (the caller falls back). */
export class NativeCallError extends Error {
  override readonly name = 'NativeCallError';
  readonly errnoNumber: number;
  constructor(call: string, errnoNumber: number) {
    super(`${call} failed with errno ${errnoNumber}`);
    this.errnoNumber = errnoNumber;
  }
}

/**
 * koffi's native addon. It ships in a per-platform package (an optional dependency of koffi) whose
 * entry point loads it directly; koffi's own entry wraps that in JavaScript that loads node:util and
 * more, ~3 of the ~7 ms of CPU loading costs. The wrapper is the fallback where the package can't be
 * found by name; both expose the same functions (load, struct, pointer, errno).
 */
function loadKoffi(require: NodeJS.Require): typeof import('koffi') {
  try {
    const native = require(`@koromix/koffi-${process.platform}-${process.arch}`) as typeof import('koffi');
    if (typeof native.load === 'function' && typeof native.struct === 'function') return native;
  } catch {
    // Not installed under that name: the wrapper finds the addon its own way.
  }
  return require('koffi') as typeof import('koffi');
}

let loaded: NativeFileOps | undefined;
let attempted = false;

function load(): NativeFileOps | undefined {
  if (process.platform !== 'linux' || process.env.VDISK_NO_NATIVE === '1') return undefined;
  // koffi is CommonJS; createRequire keeps this module loadable where koffi is absent.
  const require = createRequire(import.meta.url);
  const koffi = loadKoffi(require);
  const libc = koffi.load('libc.so.6');
  const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as (
    fd: number,
    offset: number,
    whence: number,
  ) => number | bigint;
  const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as (
    fd: number,
    mode: number,
    offset: number,
    length: number,
  ) => number;
  const syncFileRange = libc.func(
    'int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)',
  );
  // preadv2 is glibc 2.26+; without it cached reads just take the ordinary (thread-pool) path.
  let preadv2:
    | ((fd: number, iov: unknown[], count: number, offset: number, flags: number) => number | bigint)
    | undefined;
  try {
    const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
    preadv2 = libc.func('preadv2', 'int64_t', ['int', koffi.pointer(iovec), 'int', 'int64_t', 'int']);
  } catch {
    preadv2 = undefined;
  }
  const seek = (fd: number, offsetBytes: number, whence: number, name: string): number | null => {
    const result = Number(lseek(fd, offsetBytes, whence));
    if (result >= 0) return result;
    const errno = koffi.errno();
    if (errno === ENXIO) return null;
    throw new NativeCallError(name, errno);
  };
  return {
    seekData: (fd, offsetBytes) => seek(fd, offsetBytes, SEEK_DATA, 'lseek(SEEK_DATA)'),
    seekHole: (fd, offsetBytes) => seek(fd, offsetBytes, SEEK_HOLE, 'lseek(SEEK_HOLE)'),
    punchHole: (fd, offsetBytes, lengthBytes) =>
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offsetBytes, lengthBytes) === 0,
    zeroRange: (fd, offsetBytes, lengthBytes) =>
      fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offsetBytes, lengthBytes) === 0,
    allocate: (fd, offsetBytes, lengthBytes) => fallocate(fd, 0, offsetBytes, lengthBytes) === 0,
    startWriteback: (fd, offsetBytes, lengthBytes) =>
      new Promise((resolve) => {
        syncFileRange.async(
          fd,
          offsetBytes,
          lengthBytes,
          SYNC_FILE_RANGE_WRITE,
          (err: unknown, result: number) => resolve(!err && result === 0),
        );
      }),
    readNoWait: (fd, offsetBytes, buffer) => {
      if (!preadv2 || buffer.length === 0) return 0;
      const count = Number(
        preadv2(fd, [{ iov_base: buffer, iov_len: buffer.length }], 1, offsetBytes, RWF_NOWAIT),
      );
      // -1 (EAGAIN: not cached, or any error) reads as nothing.
      return Math.max(count, 0);
    },
  };
}

/**
 * Whether the native calls may be there, without loading them: false on other platforms, with
 * VDISK_NO_NATIVE=1, or once loading has failed. Loading koffi and libc costs ~4 ms, which check,
 * info and most copies from a qcow2 source never need; NodeHostFile loads on its first native call.
 */
export function nativeFileOpsExpected(): boolean {
  if (attempted) return loaded !== undefined;
  return process.platform === 'linux' && process.env.VDISK_NO_NATIVE !== '1';
}

/** The native calls, or undefined where they can't be loaded (set VDISK_NO_NATIVE=1 to force that). */
export function nativeFileOps(): NativeFileOps | undefined {
  if (!attempted) {
    attempted = true;
    try {
      loaded = load();
    } catch {
      loaded = undefined;
    }
  }
  return loaded;
}
