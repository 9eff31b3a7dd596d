// Compressed cluster payloads: raw deflate (compression_type 0, window 2^12 as qemu writes) and zstd
// (compression_type 1), run off the event loop: deflate on node:zlib's thread pool, zstd compression on
// worker threads (zstd-pool.ts), zstd decompression as a stream stopped after one cluster.
// Implements qcow2.txt "Compressed Clusters Descriptor" payload rules: output is exactly one cluster.

import { zlib } from '../../lazy-zlib.ts';
import { zstdCompressCluster } from './zstd-pool.ts';

/** node:zlib's callback calls as promises. (An ESM import of node:util would cost ~2 ms at start-up: it
 * builds a namespace of every util export, which loads node:worker_threads among others.) */
function promisedCalls() {
  const { promisify } = process.getBuiltinModule('node:util');
  const module = zlib();
  return { inflateRaw: promisify(module.inflateRaw), deflateRaw: promisify(module.deflateRaw) };
}
let calls: ReturnType<typeof promisedCalls> | undefined;
/** Made on first use, so that loading this file does not load node:zlib (see lazy-zlib.ts). */
function zlibCalls(): ReturnType<typeof promisedCalls> {
  if (!calls) calls = promisedCalls();
  return calls;
}

export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

export type CompressionName = 'zlib' | 'zstd';

export function compressionTypeName(type: number): CompressionName | undefined {
  return type === COMPRESSION_ZLIB ? 'zlib' : type === COMPRESSION_ZSTD ? 'zstd' : undefined;
}

/**
 * Decompresses one cluster. Trailing bytes after the stream (sector padding) are ignored; output larger
 * than `clusterSizeBytes` is refused without allocating more. Returns undefined when the payload is not a
 * valid stream or does not fill exactly one cluster (the caller raises CorruptImageError).
 */
export async function decompressCluster(
  payload: Uint8Array,
  clusterSizeBytes: number,
  compressionType: number,
): Promise<Buffer | undefined> {
  if (compressionType !== COMPRESSION_ZSTD) {
    try {
      const output = await zlibCalls().inflateRaw(payload, { maxOutputLength: clusterSizeBytes });
      return output.length < clusterSizeBytes ? undefined : output;
    } catch {
      return undefined;
    }
  }
  // A zstd frame followed by sector padding: stream it and stop once one cluster came out, as qemu does
  // (the padding would otherwise be parsed as a truncated second frame).
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let settled = false;
    const stream = zlib().createZstdDecompress();
    const finish = (): void => {
      if (settled) return;
      settled = true;
      stream.destroy();
      resolve(
        total >= clusterSizeBytes ? Buffer.concat(chunks, total).subarray(0, clusterSizeBytes) : undefined,
      );
    };
    stream.on('data', (chunk: Buffer) => {
      if (settled) return;
      chunks.push(chunk);
      total += chunk.length;
      if (total >= clusterSizeBytes) finish();
    });
    stream.on('error', finish);
    stream.on('end', finish);
    stream.end(payload);
  });
}

/**
 * Compresses one cluster as qemu does (deflate: level 6, window bits 12, memLevel 9; zstd: default level).
 * Returns undefined when the result would not be smaller than the cluster (write it uncompressed then).
 */
export async function compressCluster(
  data: Uint8Array,
  compressionType: number,
): Promise<Buffer | undefined> {
  if (compressionType === COMPRESSION_ZSTD) return zstdCompressCluster(data);
  try {
    // Stop as soon as the output would not be smaller: incompressible clusters (the common case
    // for already-compressed guest data) then cost no full-size output buffer and concat.
    return await zlibCalls().deflateRaw(data, {
      level: 6,
      windowBits: 12,
      memLevel: 9,
      maxOutputLength: data.length - 1,
    });
  } catch (err) {
    if ((err as { code?: unknown })?.code === 'ERR_BUFFER_TOO_LARGE') return undefined;
    throw err;
  }
}
