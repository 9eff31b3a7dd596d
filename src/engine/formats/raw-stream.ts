// raw on a forward-only stream: writing is the guest bytes in order (zero ranges from a shared zero
// buffer, never read); reading learns the size only at the end of the stream, so the target is grown
// as data arrives and cut to the final size (rounded up to a 512-byte sector, as qemu sizes raw images).

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import type { ByteSink, ByteSource } from '../io/byte-stream.ts';
import type { StreamedImage, StreamWriteRequest, StreamWriteResult } from './driver.ts';

const CHUNK_BYTES = 2 * 1024 * 1024;
const SECTOR_BYTES = 512;
/** Zero detection granularity when reading a raw stream (qemu-img convert's default -S 4k). */
const SPARSE_BYTES = 4096;
/** A target grown for a raw stream grows at least this much at a time (then doubles). */
const MIN_GROWTH_BYTES = 1024 * 1024 * 1024;

let zeroChunk: Uint8Array | undefined;
function zeroBuffer(): Uint8Array {
  zeroChunk ??= new Uint8Array(CHUNK_BYTES);
  return zeroChunk;
}

function isZero(buffer: Uint8Array): boolean {
  const zeros = zeroBuffer();
  const view = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.length);
  for (let at = 0; at < view.length; at += zeros.length) {
    const length = Math.min(zeros.length, view.length - at);
    if (view.compare(zeros, 0, length, at, at + length) !== 0) return false;
  }
  return true;
}

/** Writes the guest bytes of `source` to `sink`; ranges its chain reports as zeros are not read. */
export async function writeRawStream(
  source: BlockDevice,
  sink: ByteSink,
  request: StreamWriteRequest,
): Promise<StreamWriteResult> {
  for (const key of Object.keys(request.options)) {
    if (key === 'preallocation' && request.options[key] === 'off') continue;
    throw new InvalidOptionError({
      option: key,
      value: request.options[key],
      message: `option '${key}' cannot be used for a raw image written to a stream`,
    });
  }
  const totalBytes = source.sizeBytes;
  let dataBytes = 0;
  let position = 0;
  while (position < totalBytes) {
    const extents = await source.blockStatus(position, totalBytes - position);
    const extent = extents[0];
    // Only a range this layer says is zero (and that does not fall to a backing file) is skipped unread.
    const isZeroRange = extent?.zero === true && (extent.allocated || !source.backing);
    const end = Math.min(
      totalBytes,
      extent && extent.lengthBytes > 0 ? extent.offsetBytes + extent.lengthBytes : position + CHUNK_BYTES,
    );
    if (isZeroRange) {
      await sink.writeZeros(end - position, zeroBuffer());
      position = end;
      continue;
    }
    while (position < end) {
      const lengthBytes = Math.min(CHUNK_BYTES, end - position);
      // A fresh buffer per write: the sink may hold it until the pipe drains.
      const buffer = Buffer.alloc(lengthBytes);
      await source.read(position, buffer);
      await sink.write(buffer);
      position += lengthBytes;
      dataBytes += lengthBytes;
      request.onProgress?.(position, totalBytes);
    }
  }
  return { imageBytes: totalBytes, dataBytes };
}

/** A raw image on a stream: its size is the stream's length, known only at the end. */
export async function openRawStream(input: ByteSource): Promise<StreamedImage> {
  return {
    sizeBytes: undefined,
    copyInto: async (target, options) => {
      const resize = target.resize?.bind(target);
      if (!resize)
        throw new UnsupportedError({
          format: target.formatName,
          feature: 'resize',
          message: `a raw stream has no size until it ends, so the target must be resizable (${target.formatName} is not)`,
        });
      const block = Buffer.alloc(CHUNK_BYTES);
      let position = 0;
      for (;;) {
        const count = await input.readInto(block);
        if (count === 0) break;
        // The last piece may end mid-sector: pad it with zeros to the sector (the image is that long).
        const padded = Math.ceil(count / SECTOR_BYTES) * SECTOR_BYTES;
        block.fill(0, count, padded);
        // Only runs of non-zero 4 KiB blocks are written (qemu-img convert's default -S), so zeros in
        // the stream stay unallocated in the target.
        for (let at = 0; at < padded; ) {
          const blockEnd = Math.min(padded, at + SPARSE_BYTES);
          if (isZero(block.subarray(at, blockEnd))) {
            at = blockEnd;
            continue;
          }
          let runEnd = blockEnd;
          while (runEnd < padded) {
            const nextEnd = Math.min(padded, runEnd + SPARSE_BYTES);
            if (isZero(block.subarray(runEnd, nextEnd))) break;
            runEnd = nextEnd;
          }
          if (position + runEnd > target.sizeBytes)
            await resize(Math.max(position + runEnd, target.sizeBytes * 2, MIN_GROWTH_BYTES), {
              shrink: false,
            });
          await target.write(position + at, block.subarray(at, runEnd));
          at = runEnd;
        }
        position += count;
        options.onProgress?.(position);
        if (count < block.length) break;
      }
      const sizeBytes = Math.ceil(position / SECTOR_BYTES) * SECTOR_BYTES;
      if (sizeBytes !== target.sizeBytes) await resize(sizeBytes, { shrink: sizeBytes < target.sizeBytes });
      await target.flush();
      return { sizeBytes, spilledBytes: 0 };
    },
  };
}
