// Bounded reads of on-disk structures shared by the small formats: 64-bit fields as safe numbers
// (throwing CorruptImageError past 2^53, as STYLE.md asks), exact reads that name a truncated file,
// and table reads whose size is checked against a cap before anything is allocated.

import { CorruptImageError, ImageFormatError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';

/** Reads a little-endian u64 at `at` of `bytes` as a safe number; throws CorruptImageError when >= 2^53. */
export function u64le(bytes: Uint8Array, at: number, file: string, fileOffsetBytes = at): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return toSafe(view.getBigUint64(at, true), file, fileOffsetBytes);
}

/** Big-endian twin of u64le. */
export function u64be(bytes: Uint8Array, at: number, file: string, fileOffsetBytes = at): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return toSafe(view.getBigUint64(at, false), file, fileOffsetBytes);
}

function toSafe(value: bigint, file: string, fileOffsetBytes: number): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CorruptImageError({
      file,
      offsetBytes: fileOffsetBytes,
      lengthBytes: 8,
      message: `64-bit field ${value} is too large`,
    });
  }
  return Number(value);
}

/** A DataView over `bytes` (for 16/32-bit fields). */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Writes a safe number as a little-endian u64. */
export function setU64le(view: DataView, at: number, value: number): void {
  view.setBigUint64(at, BigInt(value), true);
}

/** Writes a safe number as a big-endian u64. */
export function setU64be(view: DataView, at: number, value: number): void {
  view.setBigUint64(at, BigInt(value), false);
}

/**
 * Reads exactly `lengthBytes` at `offsetBytes`; a short read means the file is truncated: ImageFormatError
 * naming `what`. `lengthBytes` must already be bounded by the caller (see `checkTableSize`).
 */
export async function readExact(
  file: HostFile,
  offsetBytes: number,
  lengthBytes: number,
  what: string,
): Promise<Buffer> {
  const buffer = Buffer.alloc(lengthBytes);
  const count = await file.read(offsetBytes, buffer);
  if (count < lengthBytes) {
    throw new ImageFormatError({
      file: file.path,
      offsetBytes,
      message: `${what} (${lengthBytes} bytes) extends past the end of the file (image truncated?)`,
    });
  }
  return buffer;
}

/**
 * Checks a table read from a header field before it is allocated: at most `maxBytes`, and inside the
 * file. Throws ImageFormatError / CorruptImageError.
 */
export function checkTableSize(args: {
  file: string;
  what: string;
  offsetBytes: number;
  lengthBytes: number;
  maxBytes: number;
  fileSizeBytes: number;
}): void {
  if (args.lengthBytes > args.maxBytes) {
    throw new ImageFormatError({
      file: args.file,
      offsetBytes: args.offsetBytes,
      message: `${args.what} of ${args.lengthBytes} bytes is too large (limit ${args.maxBytes})`,
    });
  }
  if (args.offsetBytes + args.lengthBytes > args.fileSizeBytes) {
    throw new CorruptImageError({
      file: args.file,
      offsetBytes: args.offsetBytes,
      lengthBytes: args.lengthBytes,
      message: `${args.what} extends past the end of the file (${args.fileSizeBytes} bytes)`,
    });
  }
}

/** Reads a NUL-terminated ASCII string of at most `lengthBytes` from `bytes` at `at`. */
export function cString(bytes: Uint8Array, at: number, lengthBytes: number): string {
  const slice = bytes.subarray(at, at + lengthBytes);
  const end = slice.indexOf(0);
  return Buffer.from(end < 0 ? slice : slice.subarray(0, end)).toString('latin1');
}

/** Host bytes the file occupies (st_blocks * 512) when the HostFile can say; else undefined. */
export async function actualSizeOf(file: HostFile): Promise<number | undefined> {
  const withAllocated = file as HostFile & { allocatedBytes?: () => Promise<number> };
  return withAllocated.allocatedBytes ? withAllocated.allocatedBytes() : undefined;
}
