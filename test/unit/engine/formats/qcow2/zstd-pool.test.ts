// zstd compression on worker threads: what comes back is a zstd frame of exactly the cluster given
// (also when the cluster is a view into a larger buffer), incompressible clusters come back as
// undefined, and many requests in flight each get their own answer.
import { randomBytes } from 'node:crypto';
import { zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { zstdCompressCluster } from '../../../../../src/engine/formats/qcow2/zstd-pool.ts';

const CLUSTER = 64 * 1024;

function patterned(seed: number): Buffer {
  const cluster = Buffer.alloc(CLUSTER);
  for (let offset = 0; offset < CLUSTER; offset += 4)
    cluster.writeUInt32LE(((offset >> 9) * 2654435761 + seed) >>> 0, offset);
  return cluster;
}

describe('zstd worker pool', () => {
  it('compresses a cluster into a frame that decompresses to it', async () => {
    const cluster = patterned(7);
    const compressed = await zstdCompressCluster(cluster);
    expect(compressed).toBeDefined();
    expect(compressed!.length).toBeLessThan(CLUSTER);
    expect(zstdDecompressSync(compressed!).equals(cluster)).toBe(true);
  });

  it('compresses only the view it is given, not the buffer behind it', async () => {
    const chunk = Buffer.concat([patterned(1), patterned(2), patterned(3)]);
    const compressed = await zstdCompressCluster(chunk.subarray(CLUSTER, 2 * CLUSTER));
    expect(zstdDecompressSync(compressed!).equals(patterned(2))).toBe(true);
  });

  it('answers undefined for incompressible data', async () => {
    expect(await zstdCompressCluster(randomBytes(CLUSTER))).toBeUndefined();
  });

  it('keeps each answer with its request when many are in flight', async () => {
    const clusters = Array.from({ length: 64 }, (_, index) => patterned(index));
    const results = await Promise.all(clusters.map((cluster) => zstdCompressCluster(cluster)));
    results.forEach((result, index) => {
      expect(zstdDecompressSync(result!).equals(clusters[index]!)).toBe(true);
    });
  });
});

describe('zstd worker pool batches', () => {
  it('gives the bytes of a one-shot zstdCompressSync (what qemu writes) for every cluster of a batch', async () => {
    // Compressible and incompressible clusters mixed in one batch: the frames are packed in place.
    const clusters = Array.from({ length: 40 }, (_, index) =>
      index % 3 === 1 ? randomBytes(CLUSTER) : patterned(index),
    );
    const results = await Promise.all(clusters.map((cluster) => zstdCompressCluster(cluster)));
    results.forEach((result, index) => {
      const cluster = clusters[index]!;
      const expected = zstdCompressSync(cluster, { pledgedSrcSize: cluster.length });
      if (expected.length >= cluster.length) expect(result).toBeUndefined();
      else expect(result?.equals(expected)).toBe(true);
    });
  });

  it('handles clusters of other sizes, larger than a batch and smaller than a sector', async () => {
    for (const sizeBytes of [512, 2 * 1024 * 1024]) {
      const cluster = Buffer.alloc(sizeBytes);
      for (let offset = 0; offset < sizeBytes; offset += 4)
        cluster.writeUInt32LE((offset >> 7) * 40503, offset);
      const result = await zstdCompressCluster(cluster);
      expect(result?.equals(zstdCompressSync(cluster, { pledgedSrcSize: sizeBytes }))).toBe(true);
    }
  });

  it('keeps answering after requests from several microtasks interleave', async () => {
    const pending: Promise<Buffer | undefined>[] = [];
    for (let round = 0; round < 5; round++) {
      for (let index = 0; index < 7; index++) pending.push(zstdCompressCluster(patterned(round * 7 + index)));
      await Promise.resolve();
    }
    const results = await Promise.all(pending);
    results.forEach((result, index) => {
      expect(zstdDecompressSync(result!).equals(patterned(index))).toBe(true);
    });
  });
});
