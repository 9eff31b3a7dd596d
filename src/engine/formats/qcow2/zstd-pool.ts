// zstd compression of qcow2 clusters on worker threads, one reused zstd context per worker and one
// message per batch of clusters. zstdCompressSync builds a stream object and a fresh context per
// call: for incompressible clusters that setup (~0.05 ms, and the garbage it leaves for a small heap)
// cost 6x the compression itself, so `convert -c -o compression_type=zstd` ran 3x slower than
// qemu-img. node:zlib's async zstdCompress is worse still (a stream per call on the libuv pool).
// The workers are unref'd: an idle pool never keeps the process alive.

import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';

/**
 * The worker, as a CommonJS script evaluated in place (no file to find, bundled or not). Each cluster
 * is one frame from one ZSTD_e_end call on a context kept across calls, which gives the same bytes as
 * a fresh context (zstd takes the frame's size from the whole input when the first call ends the
 * frame, as qemu's qcow2_zstd_compress relies on). The output room is one byte short of
 * ZSTD_COMPRESSBOUND: with the full bound zstd takes a one-pass path whose frames differ once a
 * cluster spans several 128 KiB blocks; one short, it buffers as zstdCompressSync and qemu do (whose
 * room is the cluster size) and still always has room to end the frame. The context is node:zlib's
 * own handle: where it is missing (another Node) or fails, zstdCompressSync does the cluster instead.
 * A request is { id, data, sizes }: `data` holds the clusters back to back; the answer overwrites
 * `data` in place with the frames back to back (a frame never outgrows the clusters before it, and it
 * is copied out of the context's own buffer only once the cluster is consumed), and `sizes` with each
 * frame's length, or -1 when it would not be smaller than the cluster. Both buffers move back and
 * forth without copies.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
const E_END = zlib.constants.ZSTD_e_end;
let engine = null;
let engineError = null;
let output = Buffer.alloc(0);
let reusable = true;
function bound(size) {
  return size + (size >>> 8) + (size < 131072 ? (131072 - size) >>> 11 : 0);
}
function viaEngine(input) {
  if (engine === null) {
    engine = new zlib.ZstdCompress();
    engine.on('error', (err) => { engineError = err; });
    if (!engine._handle || typeof engine._handle.writeSync !== 'function' || !engine._writeState) {
      reusable = false;
      return null;
    }
  }
  const room = bound(input.length) - 1;
  if (output.length < room) output = Buffer.allocUnsafe(room);
  engine._handle.writeSync(E_END, input, 0, input.length, output, 0, room);
  const availOut = engine._writeState[0];
  const availIn = engine._writeState[1];
  // Room left over means zstd stopped because the frame ended, not because the room ran out.
  if (engineError !== null || availIn !== 0 || availOut === 0) return null;
  return output.subarray(0, room - availOut);
}
function compress(input) {
  if (reusable) {
    try {
      const frame = viaEngine(input);
      if (frame !== null) return frame;
    } catch {}
    // A context in an unknown state is never used again.
    if (engine !== null) engine.close();
    engine = null;
    engineError = null;
  }
  return zlib.zstdCompressSync(input, { pledgedSrcSize: input.length });
}
parentPort.on('message', ({ id, data, sizes }) => {
  let error = null;
  try {
    let inputAt = 0;
    let outputAt = 0;
    for (let index = 0; index < sizes.length; index++) {
      const size = sizes[index];
      const frame = compress(data.subarray(inputAt, inputAt + size));
      if (frame.length < size) {
        data.set(frame, outputAt);
        outputAt += frame.length;
        sizes[index] = frame.length;
      } else sizes[index] = -1;
      inputAt += size;
    }
  } catch (err) {
    error = String((err && err.message) || err);
  }
  parentPort.postMessage({ id, data, sizes, error }, [data.buffer, sizes.buffer]);
});
`;

interface Request {
  resolve: (value: Buffer | undefined) => void;
  reject: (err: Error) => void;
}

/** Clusters copied into one buffer, sent to one worker as one message. */
interface Batch {
  data: Uint8Array<ArrayBuffer>;
  usedBytes: number;
  sizes: number[];
  requests: Request[];
}

interface PoolWorker {
  worker: Worker;
  /** Batches this worker holds, by id. */
  batches: Map<number, Batch>;
}

const MAX_WORKERS = 8;
/**
 * Bytes of clusters per message: convert queues a 2 MiB chunk's clusters at once, so two batches
 * keep two workers busy; more per message would leave one idle, fewer would cost more messages.
 */
const BATCH_BYTES = 1024 * 1024;
/**
 * Batch buffers kept for reuse once a worker hands them back: a fresh 1 MiB buffer costs 256 page
 * faults on first touch, ~0.5 ms, as much as compressing its 16 clusters when they do not shrink.
 */
const SPARE_BATCH_BUFFERS = 8;

class ZstdPool {
  private readonly workers: PoolWorker[] = [];
  private nextId = 0;
  private readonly limit = Math.min(MAX_WORKERS, Math.max(1, availableParallelism()));
  /** The batch clusters are being added to, sent when full or at the end of the current microtask. */
  private open: Batch | undefined;
  private readonly sealed: Batch[] = [];
  private dispatchQueued = false;
  private readonly spareBuffers: ArrayBuffer[] = [];

  private batchBuffer(): Uint8Array<ArrayBuffer> {
    return new Uint8Array(this.spareBuffers.pop() ?? new ArrayBuffer(BATCH_BYTES));
  }

  private spawn(): PoolWorker {
    // node:worker_threads loads here, with the first worker: every other run is spared its ~1.3 ms.
    const { Worker } = process.getBuiltinModule('node:worker_threads');
    // Small heaps: a worker allocates almost nothing per batch (the buffers move in and out, the
    // context is reused); V8's default young generation alone would add tens of MiB per worker.
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 32 },
    });
    const entry: PoolWorker = { worker, batches: new Map() };
    worker.unref();
    worker.on(
      'message',
      (message: { id: number; data: Uint8Array<ArrayBuffer>; sizes: Int32Array; error: string | null }) => {
        const batch = entry.batches.get(message.id);
        if (!batch) return;
        entry.batches.delete(message.id);
        if (entry.batches.size === 0) worker.unref();
        if (message.error !== null) {
          const err = new Error(`zstd compression failed: ${message.error}`);
          for (const request of batch.requests) request.reject(err);
          return;
        }
        let at = 0;
        batch.requests.forEach((request, index) => {
          const lengthBytes = message.sizes[index] ?? -1;
          if (lengthBytes < 0) {
            request.resolve(undefined);
            return;
          }
          // Copied out (frames only, the smaller part), so the buffer can carry the next batch.
          request.resolve(Buffer.from(message.data.subarray(at, at + lengthBytes)));
          at += lengthBytes;
        });
        const buffer = message.data.buffer;
        if (buffer.byteLength === BATCH_BYTES && this.spareBuffers.length < SPARE_BATCH_BUFFERS)
          this.spareBuffers.push(buffer);
      },
    );
    worker.on('error', (err) => {
      // A dead worker fails what it held; the next batch spawns a fresh one.
      this.workers.splice(this.workers.indexOf(entry), 1);
      for (const batch of entry.batches.values()) for (const request of batch.requests) request.reject(err);
      entry.batches.clear();
    });
    this.workers.push(entry);
    return entry;
  }

  /** The least busy worker, spawning one while fewer than the cores exist. */
  private pick(): PoolWorker {
    let best = this.workers[0];
    for (const entry of this.workers) if (entry.batches.size < (best?.batches.size ?? 0)) best = entry;
    if (!best || (best.batches.size > 0 && this.workers.length < this.limit)) return this.spawn();
    return best;
  }

  private seal(): void {
    if (this.open) this.sealed.push(this.open);
    this.open = undefined;
  }

  private dispatch(): void {
    this.dispatchQueued = false;
    this.seal();
    for (const batch of this.sealed.splice(0)) {
      const entry = this.pick();
      const id = this.nextId++;
      entry.batches.set(id, batch);
      entry.worker.ref();
      const sizes = Int32Array.from(batch.sizes);
      entry.worker.postMessage({ id, data: batch.data, sizes }, [batch.data.buffer, sizes.buffer]);
    }
  }

  /** The compressed cluster, or undefined when it would not be smaller than `data`. */
  compress(data: Uint8Array): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      // Copied now, into the batch that moves to the worker: the caller keeps its own buffer, and
      // posting a view would clone the whole ArrayBuffer behind it (often a 2 MiB chunk).
      let batch = this.open;
      if (batch && batch.usedBytes + data.length > batch.data.length) {
        this.seal();
        batch = undefined;
      }
      if (!batch) {
        batch = {
          data: data.length <= BATCH_BYTES ? this.batchBuffer() : new Uint8Array(data.length),
          usedBytes: 0,
          sizes: [],
          requests: [],
        };
        this.open = batch;
      }
      batch.data.set(data, batch.usedBytes);
      batch.usedBytes += data.length;
      batch.sizes.push(data.length);
      batch.requests.push({ resolve, reject });
      if (!this.dispatchQueued) {
        this.dispatchQueued = true;
        queueMicrotask(() => this.dispatch());
      }
    });
  }
}

let pool: ZstdPool | undefined;

/** zstd-compresses one cluster on a worker thread; undefined when it would not shrink. */
export function zstdCompressCluster(data: Uint8Array): Promise<Buffer | undefined> {
  pool ??= new ZstdPool();
  return pool.compress(data);
}
