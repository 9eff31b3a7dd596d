// An in-memory BlockDevice for NBD unit tests: sparse 64 KiB clusters (unwritten ones are holes that
// read as zeros), optional backing device, wrapped in the engine's GuardedDevice like a real image.

import type { BlockDevice, Extent, ImageInfo } from '../../../src/engine/block-device.ts';
import { UnsupportedError } from '../../../src/engine/errors.ts';
import { GuardedDevice } from '../../../src/engine/guarded-device.ts';

const CLUSTER_BYTES = 64 * 1024;

/** Counts of each call, so tests can check what reached the device. */
export interface MemoryDeviceStats {
  reads: number;
  /** readCached calls (the synchronous page-cache path), counted apart from reads. */
  cachedReads: number;
  flushes: number;
  discards: number;
  writes: number;
  zeroWrites: number;
}

class MemoryDevice implements BlockDevice {
  readonly sizeBytes: number;
  readonly isReadOnly: boolean;
  readonly preferredBlockSizeBytes = 512;
  readonly backing: BlockDevice | undefined;
  readonly formatName = 'memory';
  /** Cluster index -> bytes; absent = unallocated; null = allocated zero cluster. */
  readonly clusters = new Map<number, Uint8Array | null>();
  readonly stats: MemoryDeviceStats = {
    reads: 0,
    cachedReads: 0,
    flushes: 0,
    discards: 0,
    writes: 0,
    zeroWrites: 0,
  };
  /** Present with createMemoryDevice's `cachedReads`: a stand-in for raw's page-cache fast path. */
  readCached?: (offsetBytes: number, buffer: Uint8Array) => number;
  /** The memory behind each buffer readCached filled, while a test sets it (buffer reuse checks). */
  cachedReadBuffers: Set<ArrayBufferLike> | undefined;

  constructor(sizeBytes: number, isReadOnly: boolean, backing: BlockDevice | undefined) {
    this.sizeBytes = sizeBytes;
    this.isReadOnly = isReadOnly;
    this.backing = backing;
  }

  private async clusterBytes(index: number): Promise<Uint8Array> {
    const stored = this.clusters.get(index);
    if (stored) return stored;
    const out = new Uint8Array(CLUSTER_BYTES);
    if (stored === undefined && this.backing) {
      const start = index * CLUSTER_BYTES;
      const end = Math.min(start + CLUSTER_BYTES, this.backing.sizeBytes);
      if (end > start) await this.backing.read(start, out.subarray(0, end - start));
    }
    return out;
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    this.stats.reads++;
    let done = 0;
    while (done < buffer.length) {
      const at = offsetBytes + done;
      const index = Math.floor(at / CLUSTER_BYTES);
      const within = at % CLUSTER_BYTES;
      const step = Math.min(CLUSTER_BYTES - within, buffer.length - done);
      const bytes = await this.clusterBytes(index);
      buffer.set(bytes.subarray(within, within + step), done);
      done += step;
    }
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.stats.writes++;
    let done = 0;
    while (done < data.length) {
      const at = offsetBytes + done;
      const index = Math.floor(at / CLUSTER_BYTES);
      const within = at % CLUSTER_BYTES;
      const step = Math.min(CLUSTER_BYTES - within, data.length - done);
      const bytes = await this.clusterBytes(index);
      const copy = this.clusters.get(index) ? bytes : new Uint8Array(bytes);
      copy.set(data.subarray(done, done + step), within);
      this.clusters.set(index, copy);
      done += step;
    }
  }

  async writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: { mayUnmap?: boolean; fastOnly?: boolean },
  ): Promise<void> {
    this.stats.zeroWrites++;
    const aligned = offsetBytes % CLUSTER_BYTES === 0 && lengthBytes % CLUSTER_BYTES === 0;
    if (options?.fastOnly && !aligned) throw new UnsupportedError({ format: 'memory', feature: 'fast zero' });
    if (aligned) {
      for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += CLUSTER_BYTES) {
        this.clusters.set(at / CLUSTER_BYTES, null);
      }
      return;
    }
    await this.write(offsetBytes, new Uint8Array(lengthBytes));
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.stats.discards++;
    const first = Math.ceil(offsetBytes / CLUSTER_BYTES);
    const end = Math.floor((offsetBytes + lengthBytes) / CLUSTER_BYTES);
    for (let index = first; index < end; index++) this.clusters.delete(index);
  }

  async flush(): Promise<void> {
    this.stats.flushes++;
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    const end = offsetBytes + lengthBytes;
    let at = offsetBytes;
    while (at < end) {
      const index = Math.floor(at / CLUSTER_BYTES);
      const step = Math.min((index + 1) * CLUSTER_BYTES, end) - at;
      const stored = this.clusters.get(index);
      const extent: Extent =
        stored === undefined
          ? { offsetBytes: at, lengthBytes: step, allocated: false, zero: !this.backing, data: false }
          : {
              offsetBytes: at,
              lengthBytes: step,
              allocated: true,
              zero: stored === null,
              data: stored !== null,
            };
      const last = extents[extents.length - 1];
      if (
        last &&
        last.allocated === extent.allocated &&
        last.zero === extent.zero &&
        last.data === extent.data
      ) {
        last.lengthBytes += step;
      } else {
        extents.push(extent);
      }
      at += step;
    }
    return extents;
  }

  async info(): Promise<ImageInfo> {
    return { format: 'memory', filename: 'memory', virtualSizeBytes: this.sizeBytes };
  }

  async close(): Promise<void> {}
}

export interface TestDevice {
  device: BlockDevice;
  memory: MemoryDevice;
}

/**
 * A guarded in-memory device of `sizeBytes`; `backing` makes it an overlay. `cachedReads` gives it a
 * synchronous readCached (as raw has) that fills every byte ('all') or only the first half, rounded
 * down to 512 bytes ('half'), so the caller must read the rest (no backing device allowed).
 */
export function createMemoryDevice(
  sizeBytes: number,
  options: { readOnly?: boolean; backing?: BlockDevice; cachedReads?: 'all' | 'half' } = {},
): TestDevice {
  const memory = new MemoryDevice(sizeBytes, options.readOnly ?? false, options.backing);
  const mode = options.cachedReads;
  if (mode && !options.backing) {
    memory.readCached = (offsetBytes, buffer) => {
      memory.stats.cachedReads++;
      memory.cachedReadBuffers?.add(buffer.buffer);
      const filledBytes = mode === 'all' ? buffer.length : Math.floor(buffer.length / 1024) * 512;
      for (let done = 0; done < filledBytes; ) {
        const at = offsetBytes + done;
        const within = at % CLUSTER_BYTES;
        const step = Math.min(CLUSTER_BYTES - within, filledBytes - done);
        const stored = memory.clusters.get(Math.floor(at / CLUSTER_BYTES));
        if (stored) buffer.set(stored.subarray(within, within + step), done);
        else buffer.fill(0, done, done + step);
        done += step;
      }
      return filledBytes;
    };
  }
  return { device: new GuardedDevice(memory, { file: 'memory' }), memory };
}
