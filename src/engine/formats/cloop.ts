// cloop (compressed loop, Knoppix) V2.0 images, read as qemu's block/cloop.c does: a 128-byte shell
// preamble, block size and block count (u32 BE), then n+1 u64 BE offsets; block i is the zlib stream
// between offsets i and i+1 and inflates to exactly one block. Layout: cloop's compressed_loop.h.

import { inflateSync } from '../lazy-zlib.ts';
import type { BlockDevice } from '../block-device.ts';
import { CorruptImageError, ImageFormatError } from '../errors.ts';
import { readExact, u64be, viewOf } from './common/binary.ts';
import { decodedRange, MappedDevice, type RangeMapping } from './common/mapped-device.ts';
import { cloopCreateOptions, createCloop, openCloopWriter } from './cloop-writer.ts';
import type { FormatDriver, OpenContext } from './driver.ts';

export const CLOOP_MAGIC_V2 =
  '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';
export const CLOOP_PREAMBLE_BYTES = 128;
/** qemu's limits: blocks of at most 64 MiB, an offsets table of at most 512 MiB. */
export const CLOOP_MAX_BLOCK_BYTES = 64 * 1024 * 1024;
const MAX_OFFSETS_TABLE_BYTES = 512 * 1024 * 1024;

/** Scores 2 when the file starts with the V2.0 preamble (qemu's cloop_probe), else 0. */
export function probeCloop(head: Uint8Array): number {
  const magic = Buffer.from(CLOOP_MAGIC_V2, 'latin1');
  return head.length >= magic.length && Buffer.from(head.subarray(0, magic.length)).equals(magic) ? 2 : 0;
}

class CloopDevice extends MappedDevice {
  private readonly blockBytes: number;
  private readonly offsets: number[];
  private cachedBlockIndex = -1;
  private cachedBlock: Uint8Array | undefined;

  constructor(context: OpenContext, blockBytes: number, offsets: number[]) {
    super({
      formatName: 'cloop',
      path: context.path,
      file: context.file,
      sizeBytes: (offsets.length - 1) * blockBytes,
      isReadOnly: true,
    });
    this.blockBytes = blockBytes;
    this.offsets = offsets;
  }

  private async block(blockIndex: number): Promise<Uint8Array> {
    if (blockIndex === this.cachedBlockIndex && this.cachedBlock) return this.cachedBlock;
    const start = this.offsets[blockIndex]!;
    const compressedBytes = this.offsets[blockIndex + 1]! - start;
    const compressed = await readExact(this.file, start, compressedBytes, `cloop block ${blockIndex}`);
    let plain: Buffer;
    try {
      // maxOutputLength bounds a decompression bomb to one block.
      plain = inflateSync(compressed, { maxOutputLength: this.blockBytes });
    } catch (err) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: start,
        lengthBytes: compressedBytes,
        message: `cloop block ${blockIndex} does not inflate to ${this.blockBytes} bytes`,
        cause: err,
      });
    }
    if (plain.length !== this.blockBytes) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: start,
        lengthBytes: compressedBytes,
        message: `cloop block ${blockIndex} inflates to ${plain.length} bytes, not ${this.blockBytes}`,
      });
    }
    this.cachedBlockIndex = blockIndex;
    this.cachedBlock = plain;
    return plain;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const blockIndex = Math.floor(offsetBytes / this.blockBytes);
    const inBlockBytes = offsetBytes % this.blockBytes;
    const lengthBytes = Math.min(this.blockBytes - inBlockBytes, maxLengthBytes);
    return decodedRange(lengthBytes, inBlockBytes, () => this.block(blockIndex));
  }
}

/** Parses and checks the block size, count and offsets table; throws ImageFormatError / CorruptImageError. */
export async function readCloopIndex(
  context: OpenContext,
): Promise<{ blockBytes: number; offsets: number[] }> {
  const { file, path } = context;
  const head = await readExact(file, 0, CLOOP_PREAMBLE_BYTES + 8, 'cloop header');
  const view = viewOf(head);
  const blockBytes = view.getUint32(CLOOP_PREAMBLE_BYTES, false);
  const blockCount = view.getUint32(CLOOP_PREAMBLE_BYTES + 4, false);
  if (blockBytes === 0 || blockBytes % 512 !== 0) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 128,
      message: `block_size ${blockBytes} must be a multiple of 512`,
    });
  }
  if (blockBytes > CLOOP_MAX_BLOCK_BYTES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 128,
      message: `block_size ${blockBytes} must be 64 MB or less`,
    });
  }
  const tableBytes = (blockCount + 1) * 8;
  const fileSizeBytes = await file.sizeBytes();
  if (tableBytes > MAX_OFFSETS_TABLE_BYTES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 132,
      message: `image requires too many offsets (${blockCount} blocks)`,
    });
  }
  if (CLOOP_PREAMBLE_BYTES + 8 + tableBytes > fileSizeBytes) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 132,
      message: `offsets table of ${blockCount} blocks extends past the end of the file`,
    });
  }
  const table = await readExact(file, CLOOP_PREAMBLE_BYTES + 8, tableBytes, 'cloop offsets table');
  const offsets: number[] = new Array(blockCount + 1);
  for (let i = 0; i <= blockCount; i++) {
    const at = CLOOP_PREAMBLE_BYTES + 8 + i * 8;
    const offset = u64be(table, i * 8, path, at);
    if (i > 0) {
      const previous = offsets[i - 1]!;
      if (offset < previous) {
        throw new CorruptImageError({
          file: path,
          offsetBytes: at,
          lengthBytes: 8,
          message: `offsets not monotonically increasing at index ${i}, image file is corrupt`,
        });
      }
      // qemu's bound: zlib never expands a block past twice its size.
      if (offset - previous > 2 * CLOOP_MAX_BLOCK_BYTES) {
        throw new CorruptImageError({
          file: path,
          offsetBytes: at,
          lengthBytes: 8,
          message: `invalid compressed block size at index ${i}, image file is corrupt`,
        });
      }
    }
    if (offset > fileSizeBytes) {
      throw new CorruptImageError({
        file: path,
        offsetBytes: at,
        lengthBytes: 8,
        message: `block offset ${offset} at index ${i} is past the end of the file (${fileSizeBytes} bytes)`,
      });
    }
    offsets[i] = offset;
  }
  return { blockBytes, offsets };
}

async function openCloop(context: OpenContext): Promise<BlockDevice> {
  // Read-write opens are sequential rewrites (beyond qemu, which only reads cloop).
  if (!context.readOnly) return openCloopWriter(context);
  const { blockBytes, offsets } = await readCloopIndex(context);
  return new CloopDevice(context, blockBytes, offsets);
}

export const cloopDriver = {
  name: 'cloop',
  description: 'cloop compressed loop image (read; create and sequential rewrite beyond qemu)',
  probe: (head: Uint8Array) => probeCloop(head),
  capabilities: {
    create: true,
    write: true,
    backing: false,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'none',
    concurrentWrites: false,
  },
  createOptions: cloopCreateOptions,
  open: openCloop,
  create: createCloop,
} satisfies FormatDriver;
