// cloop writing, beyond qemu (which only reads cloop): `create` lays out a valid image of zero blocks,
// and a read-write open rewrites the image block by block in order (as convert does), compressing each
// block with zlib once it is complete; close writes the offsets table. Layout as cloop.ts reads it.

import { deflateSync, inflateSync } from '../lazy-zlib.ts';
import type { BlockDevice, Extent, ImageInfo, WriteOptions, WriteZeroesOptions } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { sizeOption } from '../size.ts';
import { actualSizeOf, viewOf } from './common/binary.ts';
import type { CreateContext, CreateOptionSpec, OpenContext } from './driver.ts';
import { CLOOP_MAGIC_V2, CLOOP_MAX_BLOCK_BYTES, CLOOP_PREAMBLE_BYTES, readCloopIndex } from './cloop.ts';

const DEFAULT_BLOCK_BYTES = 64 * 1024;
/** The writer keeps every block's offset in memory: at most 64 Mi blocks. */
const MAX_BLOCKS = 64 * 1024 * 1024;

function headerBytes(blockBytes: number, blockCount: number): Uint8Array {
  const head = new Uint8Array(CLOOP_PREAMBLE_BYTES + 8);
  head.set(Buffer.from(CLOOP_MAGIC_V2, 'latin1'), 0);
  const view = viewOf(head);
  view.setUint32(CLOOP_PREAMBLE_BYTES, blockBytes, false);
  view.setUint32(CLOOP_PREAMBLE_BYTES + 4, blockCount, false);
  return head;
}

function offsetsBytes(offsets: readonly number[]): Uint8Array {
  const table = new Uint8Array(offsets.length * 8);
  const view = viewOf(table);
  offsets.forEach((offset, i) => {
    view.setBigUint64(i * 8, BigInt(offset), false);
  });
  return table;
}

/** Writes a complete image of `sizeBytes` (rounded up to whole blocks) whose blocks are all zeros. */
export async function createCloop(context: CreateContext): Promise<void> {
  const blockBytes = sizeOption(context.options, 'block_size', DEFAULT_BLOCK_BYTES);
  if (blockBytes === 0 || blockBytes % 512 !== 0 || blockBytes > CLOOP_MAX_BLOCK_BYTES) {
    throw new InvalidOptionError({
      option: 'block_size',
      value: blockBytes,
      message: 'cloop block_size must be a multiple of 512 bytes, at most 64 MiB',
    });
  }
  const blockCount = Math.ceil(context.sizeBytes / blockBytes);
  if (blockCount > MAX_BLOCKS)
    throw new InvalidOptionError({
      option: 'size',
      value: context.sizeBytes,
      message: `cloop images hold at most ${MAX_BLOCKS} blocks`,
    });
  if (context.backingFile !== undefined)
    throw new UnsupportedError({ format: 'cloop', feature: 'backing files' });
  const zeroBlock = deflateSync(new Uint8Array(blockBytes), { level: 9 });
  const dataStart = CLOOP_PREAMBLE_BYTES + 8 + (blockCount + 1) * 8;
  const offsets = Array.from({ length: blockCount + 1 }, (_, i) => dataStart + i * zeroBlock.length);
  await context.file.truncate(0);
  await context.file.write(0, headerBytes(blockBytes, blockCount));
  await context.file.write(CLOOP_PREAMBLE_BYTES + 8, offsetsBytes(offsets));
  // Zero blocks in batches, so a large image is written in a bounded number of calls.
  const batchBlocks = Math.max(1, Math.floor((1 << 20) / zeroBlock.length));
  const batch = Buffer.concat(Array.from({ length: Math.min(batchBlocks, blockCount) }, () => zeroBlock));
  for (let block = 0; block < blockCount; block += batchBlocks) {
    const count = Math.min(batchBlocks, blockCount - block);
    await context.file.write(offsets[block]!, batch.subarray(0, count * zeroBlock.length));
  }
  await context.file.sync();
}

export const cloopCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size (rounded up to whole blocks)' },
  {
    name: 'block_size',
    type: 'size',
    help: 'Uncompressed block size (multiple of 512, at most 64 MiB)',
    default: DEFAULT_BLOCK_BYTES,
  },
];

/** Sequential writer over an existing image: its old content is replaced block by block. */
class CloopWriter implements BlockDevice {
  readonly isReadOnly = false;
  readonly backing = undefined;
  readonly formatName = 'cloop';
  readonly preferredBlockSizeBytes: number;
  readonly sizeBytes: number;
  private readonly context: OpenContext;
  private readonly blockBytes: number;
  private readonly blockCount: number;
  /** offsets[i] for every finished block, plus the end of the last one. */
  private readonly offsets: number[];
  private current: Uint8Array;
  private currentIndex = 0;
  private closed = false;
  /** Serializes writes: a block is compressed and appended by one writer at a time. */
  private tail: Promise<unknown> = Promise.resolve();

  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.tail.then(task, task);
    this.tail = run.catch(() => undefined);
    return run;
  }

  constructor(context: OpenContext, blockBytes: number, blockCount: number) {
    this.context = context;
    this.blockBytes = blockBytes;
    this.blockCount = blockCount;
    this.sizeBytes = blockBytes * blockCount;
    this.preferredBlockSizeBytes = blockBytes;
    this.offsets = [CLOOP_PREAMBLE_BYTES + 8 + (blockCount + 1) * 8];
    this.current = new Uint8Array(blockBytes);
  }

  private async finishBlocksBefore(blockIndex: number): Promise<void> {
    while (this.currentIndex < Math.min(blockIndex, this.blockCount)) {
      const compressed = deflateSync(this.current, { level: 9 });
      const at = this.offsets[this.offsets.length - 1]!;
      await this.context.file.write(at, compressed);
      this.offsets.push(at + compressed.length);
      this.current.fill(0);
      this.currentIndex++;
    }
  }

  write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.exclusive(() => this.writeUnlocked(offsetBytes, data, options));
  }

  private async writeUnlocked(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    const firstBlock = Math.floor(offsetBytes / this.blockBytes);
    if (firstBlock < this.currentIndex) {
      throw new UnsupportedError({
        format: 'cloop',
        feature: 'random writes',
        message: `${this.context.path}: cloop images are written sequentially; block ${firstBlock} is already compressed (next is ${this.currentIndex})`,
      });
    }
    let done = 0;
    while (done < data.length) {
      const at = offsetBytes + done;
      const block = Math.floor(at / this.blockBytes);
      await this.finishBlocksBefore(block);
      const inBlock = at % this.blockBytes;
      const step = Math.min(this.blockBytes - inBlock, data.length - done);
      this.current.set(data.subarray(done, done + step), inBlock);
      done += step;
    }
    if (options?.fua) await this.context.file.sync();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, _options?: WriteZeroesOptions): Promise<void> {
    // Unwritten blocks are zeros; only the part inside the current block needs clearing.
    const firstBlock = Math.floor(offsetBytes / this.blockBytes);
    if (firstBlock < this.currentIndex) {
      throw new UnsupportedError({
        format: 'cloop',
        feature: 'random writes',
        message: `${this.context.path}: cloop images are written sequentially`,
      });
    }
    const currentStart = this.currentIndex * this.blockBytes;
    const from = Math.max(offsetBytes, currentStart);
    const to = Math.min(offsetBytes + lengthBytes, currentStart + this.blockBytes);
    if (from < to) this.current.fill(0, from - currentStart, to - currentStart);
  }

  async discard(): Promise<void> {}

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const at = offsetBytes + done;
      const block = Math.floor(at / this.blockBytes);
      const inBlock = at % this.blockBytes;
      const step = Math.min(this.blockBytes - inBlock, buffer.length - done);
      const part = buffer.subarray(done, done + step);
      if (block < this.currentIndex) {
        const start = this.offsets[block]!;
        const compressed = new Uint8Array(this.offsets[block + 1]! - start);
        await this.context.file.read(start, compressed);
        part.set(
          inflateSync(compressed, { maxOutputLength: this.blockBytes }).subarray(inBlock, inBlock + step),
        );
      } else if (block === this.currentIndex) part.set(this.current.subarray(inBlock, inBlock + step));
      else part.fill(0);
      done += step;
    }
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return [{ offsetBytes, lengthBytes, allocated: true, zero: false, data: true, compressed: true }];
  }

  async info(): Promise<ImageInfo> {
    return {
      format: 'cloop',
      filename: this.context.path,
      virtualSizeBytes: this.sizeBytes,
      actualSizeBytes: await actualSizeOf(this.context.file),
    };
  }

  /** Compressed blocks are on disk; the image becomes valid (offsets table) only at close. */
  async flush(): Promise<void> {
    await this.context.file.sync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.exclusive(() => this.finishBlocksBefore(this.blockCount));
      await this.context.file.write(CLOOP_PREAMBLE_BYTES + 8, offsetsBytes(this.offsets));
      await this.context.file.truncate(this.offsets[this.offsets.length - 1]!);
      await this.context.file.sync();
    } finally {
      await this.context.file.close();
    }
  }
}

/** Opens an existing cloop image for a sequential rewrite (its block size and count are kept). */
export async function openCloopWriter(context: OpenContext): Promise<BlockDevice> {
  const { blockBytes, offsets } = await readCloopIndex(context);
  if (offsets.length - 1 > MAX_BLOCKS)
    throw new UnsupportedError({
      format: 'cloop',
      feature: 'writes',
      message: `${context.path}: too many blocks to rewrite`,
    });
  return new CloopWriter(context, blockBytes, offsets.length - 1);
}
