// qemu-img compare: are two images' guest contents equal? Zero ranges (holes, zero clusters,
// unallocated ends of a chain) are skipped without reading; a size mismatch is allowed when the
// larger image's extra part reads as zeros, unless strict. Offsets are reported per 512-byte sector,
// as qemu-img's compare_buffers / check_empty_sectors report them (qemu-img.c, img_compare).

import type { BlockDevice } from '../block-device.ts';
import { type ChainExtent, chainBlockStatus } from './chain-status.ts';

/** Largest read per image per step: qemu-img's IO_BUF_SIZE. */
const COMPARE_CHUNK_BYTES = 2 * 1024 * 1024;
const SECTOR_BYTES = 512;

export type CompareResult =
  | { kind: 'identical'; sizeMismatch: boolean }
  | { kind: 'content-mismatch'; offsetBytes: number; sizeMismatch: boolean }
  | { kind: 'size-mismatch' }
  | { kind: 'status-mismatch'; offsetBytes: number };

export interface CompareOptions {
  /** `-s`: sizes and allocation must match too. */
  strict?: boolean;
  /** Called with (doneBytes, totalBytes) as the comparison advances. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

function firstNonZero(buffer: Uint8Array, lengthBytes: number): number {
  // Compare 8 bytes at a time where aligned; the tail byte by byte.
  const words = Math.floor(lengthBytes / 8);
  const view = new BigUint64Array(buffer.buffer, buffer.byteOffset, buffer.byteOffset % 8 === 0 ? words : 0);
  let index = 0;
  for (; index < view.length; index += 1) if (view[index] !== 0n) break;
  for (let byte = index * 8; byte < lengthBytes; byte += 1) if (buffer[byte] !== 0) return byte;
  return -1;
}

function firstDifference(a: Uint8Array, b: Uint8Array, lengthBytes: number): number {
  if (
    Buffer.from(a.buffer, a.byteOffset, lengthBytes).equals(Buffer.from(b.buffer, b.byteOffset, lengthBytes))
  )
    return -1;
  for (let byte = 0; byte < lengthBytes; byte += 1) if (a[byte] !== b[byte]) return byte;
  return -1;
}

function sectorOf(offsetBytes: number): number {
  return Math.floor(offsetBytes / SECTOR_BYTES) * SECTOR_BYTES;
}

/** The chain status at `offsetBytes`; `qemuView` (strict mode) answers as qemu's block layer would. */
async function statusAt(
  device: BlockDevice,
  offsetBytes: number,
  endBytes: number,
  qemuView = false,
): Promise<ChainExtent> {
  const [first] = await chainBlockStatus(device, offsetBytes, endBytes - offsetBytes, { qemuView });
  if (!first || first.offsetBytes > offsetBytes || first.offsetBytes + first.lengthBytes <= offsetBytes) {
    return {
      offsetBytes,
      lengthBytes: endBytes - offsetBytes,
      depth: 0,
      present: true,
      zero: false,
      data: true,
    };
  }
  return first;
}

/** Offset of the first non-zero sector of `device` in [startBytes, endBytes), or -1. */
async function findNonZero(
  device: BlockDevice,
  startBytes: number,
  endBytes: number,
  buffer: Uint8Array,
): Promise<number> {
  let positionBytes = startBytes;
  while (positionBytes < endBytes) {
    const status = await statusAt(device, positionBytes, endBytes);
    const stopBytes = Math.min(
      status.offsetBytes + status.lengthBytes,
      endBytes,
      positionBytes + COMPARE_CHUNK_BYTES,
    );
    if (!status.zero) {
      const view = buffer.subarray(0, stopBytes - positionBytes);
      await device.read(positionBytes, view);
      const index = firstNonZero(view, view.length);
      if (index >= 0) return sectorOf(positionBytes + index);
    }
    positionBytes = stopBytes;
  }
  return -1;
}

/** Compares the guest contents of `a` and `b` (each with its backing chain). */
export async function compareImages(
  a: BlockDevice,
  b: BlockDevice,
  options: CompareOptions = {},
): Promise<CompareResult> {
  const sizeMismatch = a.sizeBytes !== b.sizeBytes;
  if (options.strict && sizeMismatch) return { kind: 'size-mismatch' };
  const commonBytes = Math.min(a.sizeBytes, b.sizeBytes);
  const totalBytes = Math.max(a.sizeBytes, b.sizeBytes);
  const bufferA = new Uint8Array(COMPARE_CHUNK_BYTES);
  const bufferB = new Uint8Array(COMPARE_CHUNK_BYTES);
  let positionBytes = 0;
  while (positionBytes < commonBytes) {
    const statusA = await statusAt(a, positionBytes, commonBytes, options.strict);
    const statusB = await statusAt(b, positionBytes, commonBytes, options.strict);
    // qemu compares whole status words: they carry BDRV_BLOCK_EOF when the run reaches the end, and
    // BDRV_BLOCK_OFFSET_VALID when the bytes sit at a known host offset.
    const eofA = statusA.offsetBytes + statusA.lengthBytes >= a.sizeBytes;
    const eofB = statusB.offsetBytes + statusB.lengthBytes >= b.sizeBytes;
    const sameStatus =
      statusA.present === statusB.present &&
      statusA.zero === statusB.zero &&
      statusA.data === statusB.data &&
      eofA === eofB &&
      (statusA.hostOffsetBytes === undefined) === (statusB.hostOffsetBytes === undefined);
    if (options.strict && !sameStatus) {
      return { kind: 'status-mismatch', offsetBytes: positionBytes };
    }
    const stopBytes = Math.min(
      statusA.offsetBytes + statusA.lengthBytes,
      statusB.offsetBytes + statusB.lengthBytes,
      positionBytes + COMPARE_CHUNK_BYTES,
    );
    const lengthBytes = stopBytes - positionBytes;
    if (statusA.zero && statusB.zero) {
      // both read as zeros
    } else if (statusA.zero || statusB.zero) {
      const other = statusA.zero ? b : a;
      const view = bufferA.subarray(0, lengthBytes);
      await other.read(positionBytes, view);
      const index = firstNonZero(view, lengthBytes);
      if (index >= 0)
        return { kind: 'content-mismatch', offsetBytes: sectorOf(positionBytes + index), sizeMismatch };
    } else {
      const viewA = bufferA.subarray(0, lengthBytes);
      const viewB = bufferB.subarray(0, lengthBytes);
      await Promise.all([a.read(positionBytes, viewA), b.read(positionBytes, viewB)]);
      const index = firstDifference(viewA, viewB, lengthBytes);
      if (index >= 0)
        return { kind: 'content-mismatch', offsetBytes: sectorOf(positionBytes + index), sizeMismatch };
    }
    positionBytes = stopBytes;
    options.onProgress?.(positionBytes, totalBytes);
  }
  if (sizeMismatch) {
    const larger = a.sizeBytes > b.sizeBytes ? a : b;
    const offsetBytes = await findNonZero(larger, commonBytes, larger.sizeBytes, bufferA);
    options.onProgress?.(totalBytes, totalBytes);
    if (offsetBytes >= 0) return { kind: 'content-mismatch', offsetBytes, sizeMismatch };
  }
  return { kind: 'identical', sizeMismatch };
}
