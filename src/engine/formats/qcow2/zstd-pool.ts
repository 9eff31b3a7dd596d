// zstd compression of qcow2 clusters on worker threads. node:zlib's async zstdCompress costs ~1.1 ms
// per 64 KiB call (a new stream and context each time) against ~0.2 ms for zstdCompressSync, so the
// async form made `convert -c -o compression_type=zstd` 30x slower than qemu-img. Here each worker
// compresses synchronously (one context per call, sized by pledgedSrcSize), and as many workers as
// cores run at once. The workers are unref'd: an idle pool never keeps the process alive.

import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';

/** The worker, as a CommonJS script evaluated in place (no file to find, bundled or not). */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
parentPort.on('message', ({ id, data }) => {
  let output = null;
  let error = null;
  try {
    const compressed = zlib.zstdCompressSync(data, { pledgedSrcSize: data.length });
    // An own buffer of exactly the output's length, moved (not cloned) back: posting the Buffer
    // itself would clone the whole ArrayBuffer behind it, and zlib's may be larger.
    if (compressed.length < data.length) output = new Uint8Array(compressed);
  } catch (err) {
    error = String(err && err.message || err);
  }
  parentPort.postMessage({ id, output, error }, output ? [output.buffer] : []);
});
`;

interface Pending {
  resolve: (value: Buffer | undefined) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  /** Requests this worker holds. */
  ids: Set<number>;
}

const MAX_WORKERS = 8;

class ZstdPool {
  private readonly workers: PoolWorker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private readonly limit = Math.min(MAX_WORKERS, Math.max(1, availableParallelism()));

  private spawn(): PoolWorker {
    // node:worker_threads loads here, with the first worker: every other run is spared its ~1.3 ms.
    const { Worker } = process.getBuiltinModule('node:worker_threads');
    // Small heaps: a worker holds one cluster in and one out at a time; V8's default young generation
    // alone would add tens of MiB of resident memory per worker.
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 32 },
    });
    const entry: PoolWorker = { worker, ids: new Set() };
    worker.unref();
    worker.on('message', (message: { id: number; output: Uint8Array | null; error: string | null }) => {
      const request = this.pending.get(message.id);
      if (!request) return;
      this.pending.delete(message.id);
      entry.ids.delete(message.id);
      if (entry.ids.size === 0) worker.unref();
      if (message.error !== null) request.reject(new Error(`zstd compression failed: ${message.error}`));
      else
        request.resolve(
          message.output
            ? Buffer.from(message.output.buffer, message.output.byteOffset, message.output.byteLength)
            : undefined,
        );
    });
    worker.on('error', (err) => {
      // A dead worker fails what it held; the next call spawns a fresh one.
      this.workers.splice(this.workers.indexOf(entry), 1);
      for (const id of entry.ids) {
        this.pending.get(id)?.reject(err);
        this.pending.delete(id);
      }
      entry.ids.clear();
    });
    this.workers.push(entry);
    return entry;
  }

  /** The least busy worker, spawning one while fewer than the cores exist. */
  private pick(): PoolWorker {
    const limit = this.limit;
    let best = this.workers[0];
    for (const entry of this.workers) if (entry.ids.size < (best?.ids.size ?? 0)) best = entry;
    if (!best || (best.ids.size > 0 && this.workers.length < limit)) return this.spawn();
    return best;
  }

  /** The compressed cluster, or undefined when it would not be smaller than `data`. */
  compress(data: Uint8Array): Promise<Buffer | undefined> {
    const entry = this.pick();
    const id = this.nextId++;
    entry.ids.add(id);
    entry.worker.ref();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // The cluster is copied into its own buffer and that buffer is moved to the worker: posting a
      // view would clone its whole underlying ArrayBuffer (often a 2 MiB chunk), and the caller
      // keeps using its own.
      const copy = new Uint8Array(data.byteLength);
      copy.set(data);
      entry.worker.postMessage({ id, data: copy }, [copy.buffer]);
    });
  }
}

let pool: ZstdPool | undefined;

/** zstd-compresses one cluster on a worker thread; undefined when it would not shrink. */
export function zstdCompressCluster(data: Uint8Array): Promise<Buffer | undefined> {
  pool ??= new ZstdPool();
  return pool.compress(data);
}
