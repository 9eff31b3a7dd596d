// Reusable READ buffers: a reply's bytes are handed back once the socket has written them, so a
// steady stream of same-sized reads (nbdcopy, the kernel) allocates nothing and feeds the GC nothing.
// Bounded: at most MAX_POOLED_BYTES idle, only sizes up to MAX_POOLED_BUFFER_BYTES.

const MAX_POOLED_BUFFER_BYTES = 4 * 1024 * 1024;
const MAX_POOLED_BYTES = 64 * 1024 * 1024;

const freeBySize = new Map<number, Buffer[]>();
let pooledBytes = 0;

/** A buffer of exactly `lengthBytes` (contents undefined): pooled when one is free. */
export function takeBuffer(lengthBytes: number): Buffer {
  const free = freeBySize.get(lengthBytes);
  const reused = free?.pop();
  if (reused) {
    pooledBytes -= lengthBytes;
    return reused;
  }
  return Buffer.allocUnsafeSlow(lengthBytes);
}

/** Returns a buffer from takeBuffer once nothing references it any more. */
export function giveBuffer(buffer: Buffer): void {
  const lengthBytes = buffer.length;
  if (lengthBytes > MAX_POOLED_BUFFER_BYTES || pooledBytes + lengthBytes > MAX_POOLED_BYTES) return;
  if (buffer.byteOffset !== 0 || buffer.buffer.byteLength !== lengthBytes) return;
  let free = freeBySize.get(lengthBytes);
  if (!free) {
    // Sizes come from clients: keep few distinct ones so the map can't grow without bound.
    if (freeBySize.size >= 16) return;
    free = [];
    freeBySize.set(lengthBytes, free);
  }
  free.push(buffer);
  pooledBytes += lengthBytes;
}
