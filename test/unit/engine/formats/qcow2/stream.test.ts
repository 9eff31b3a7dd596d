// The pure parts of qcow2 streaming: the metadata-first layout (refcount blocks cover every cluster,
// themselves included), the pending-run heap (host order), the passed-range set (merging, late
// inserts), and the reader against the writer with a chunking that splits every structure.

import { describe, expect, it } from 'vitest';
import type { BlockDevice, Extent, ImageInfo } from '../../../../../src/engine/block-device.ts';
import { openQcow2Stream } from '../../../../../src/engine/formats/qcow2/stream-reader.ts';
import { PassedRanges, PendingHeap } from '../../../../../src/engine/formats/qcow2/stream-pending.ts';
import { planStreamLayout, writeQcow2Stream } from '../../../../../src/engine/formats/qcow2/stream-writer.ts';
import { ByteSink, ByteSource } from '../../../../../src/engine/io/byte-stream.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { prng } from '../../../../helpers/format-harness.ts';

/** A memory block device (the source and the target of the round trip). */
class MemoryDevice implements BlockDevice {
  readonly bytes: Buffer;
  readonly sizeBytes: number;
  readonly isReadOnly = false;
  readonly preferredBlockSizeBytes = 512;
  readonly backing = undefined;
  readonly formatName = 'memory';
  constructor(sizeBytes: number) {
    this.sizeBytes = sizeBytes;
    this.bytes = Buffer.alloc(sizeBytes);
  }
  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    buffer.set(this.bytes.subarray(offsetBytes, offsetBytes + buffer.length));
  }
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.bytes.set(data, offsetBytes);
  }
  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return [{ offsetBytes, lengthBytes, allocated: true, zero: false, data: true }];
  }
  async info(): Promise<ImageInfo> {
    return { format: 'memory', filename: 'memory', virtualSizeBytes: this.sizeBytes };
  }
  async close(): Promise<void> {}
}

describe('qcow2 stream layout', () => {
  it('gives every cluster, the refcount structures included, a refcount entry', () => {
    for (const [clusterBits, refcountOrder, dataClusters] of [
      [9, 0, 100_000],
      [9, 6, 5_000],
      [16, 4, 1_000_000],
      [12, 1, 0],
    ] as const) {
      const layout = planStreamLayout(clusterBits, refcountOrder, 3, 2, dataClusters);
      const entriesPerBlock = (2 ** clusterBits * 8) / 2 ** refcountOrder;
      expect(layout.refcountBlockCount * entriesPerBlock).toBeGreaterThanOrEqual(layout.totalClusters);
      expect(layout.refcountTableClusters * 2 ** clusterBits).toBeGreaterThanOrEqual(
        layout.refcountBlockCount * 8,
      );
      expect(layout.totalClusters).toBe(
        1 + layout.refcountTableClusters + layout.refcountBlockCount + layout.l1Clusters + 2 + dataClusters,
      );
    }
  });
});

describe('qcow2 stream bookkeeping', () => {
  it('pops pending items in host order', () => {
    const heap = new PendingHeap();
    const random = prng(7);
    const offsets = Array.from({ length: 500 }, () => Math.floor(random() * 1e6) * 512);
    for (const hostOffsetBytes of offsets)
      heap.push({ kind: 'data', hostOffsetBytes, guestOffsetBytes: 0, lengthBytes: 512 });
    const popped: number[] = [];
    for (let item = heap.pop(); item; item = heap.pop()) popped.push(item.hostOffsetBytes);
    expect(popped).toEqual([...offsets].sort((a, b) => a - b));
  });

  it('merges touching ranges, keeps late inserts sorted, and answers overlaps', () => {
    const ranges = new PassedRanges();
    ranges.add(0, 10);
    ranges.add(10, 20);
    ranges.add(40, 50);
    ranges.add(25, 30);
    ranges.add(28, 41);
    expect(ranges.overlaps(20, 25)).toBe(false);
    expect(ranges.overlaps(19, 21)).toBe(true);
    expect(ranges.overlaps(30, 31)).toBe(true);
    expect(ranges.overlaps(50, 60)).toBe(false);
    expect(ranges.overlaps(49, 60)).toBe(true);
  });
});

describe('qcow2 stream round trip', () => {
  it('reads back what the writer wrote, whatever the chunking of the stream', async () => {
    const source = new MemoryDevice(3 * 1024 * 1024 + 4096);
    const random = prng(11);
    for (let at = 0; at < source.sizeBytes; at += 4096)
      if (random() < 0.3) source.bytes.fill(1 + (at % 251), at, at + 4096);
    const chunks: Buffer[] = [];
    const sink = new ByteSink(
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          chunks.push(Buffer.from(chunk));
          done();
        },
      }),
      'memory',
    );
    const written = await writeQcow2Stream(source, sink, {
      options: { cluster_size: '4096' },
      minSparseBytes: 4096,
    });
    const image = Buffer.concat(chunks);
    expect(image.length).toBe(written.imageBytes);
    // Odd-sized chunks split headers, tables and clusters.
    const pieces = async function* (): AsyncGenerator<Uint8Array> {
      for (let at = 0; at < image.length; at += 3001) yield image.subarray(at, at + 3001);
    };
    const streamed = await openQcow2Stream(new ByteSource(pieces(), 'memory'));
    expect(streamed.sizeBytes).toBe(source.sizeBytes);
    const target = new MemoryDevice(source.sizeBytes);
    const result = await streamed.copyInto(target, { spillPath: '/nonexistent/never-used' });
    expect(result.spilledBytes).toBe(0);
    expect(target.bytes.equals(source.bytes)).toBe(true);
  });
});

/** A target that accepts any write inside its size and keeps nothing (sizes come from fuzzed headers). */
class DiscardingDevice extends MemoryDevice {
  override readonly sizeBytes: number;
  constructor(sizeBytes: number) {
    super(0);
    this.sizeBytes = sizeBytes;
  }
  override async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (offsetBytes < 0 || offsetBytes + data.length > this.sizeBytes)
      throw new Error('write outside the device');
  }
}

describe('qcow2 stream reader on damaged streams', () => {
  it('property: mutated metadata converts or fails with a VdiskError, never a crash or a hang', async () => {
    const source = new MemoryDevice(512 * 1024);
    for (let at = 0; at < source.sizeBytes; at += 8192) source.bytes.fill(at % 255, at, at + 2048);
    const chunks: Buffer[] = [];
    const sink = new ByteSink(
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          chunks.push(Buffer.from(chunk));
          done();
        },
      }),
      'memory',
    );
    await writeQcow2Stream(source, sink, { options: { cluster_size: '4096' }, minSparseBytes: 4096 });
    const pristine = Buffer.concat(chunks);
    // Header, refcount table and block, L1 and the L2 table: the first five clusters.
    const metadataBytes = 5 * 4096;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.nat(metadataBytes - 1), value: fc.nat(255) }), {
          minLength: 1,
          maxLength: 8,
        }),
        async (mutations) => {
          const image = Buffer.from(pristine);
          for (const { at, value } of mutations) image[at] = value;
          try {
            const streamed = await openQcow2Stream(
              new ByteSource(
                (async function* () {
                  yield image;
                })(),
                'fuzz',
              ),
            );
            await streamed.copyInto(new DiscardingDevice(streamed.sizeBytes ?? 0), {
              spillPath: join(tmpdir(), `vdisk-stream-fuzz-${process.pid}`),
            });
          } catch (err) {
            if (!isVdiskError(err)) throw err;
          }
        },
      ),
      { numRuns: 300, seed: 42 },
    );
  });
});
