// Exact-length reads from a byte stream for the handshake (await 16 bytes, then N bytes of option
// data). Backpressure: the stream is paused whenever nothing is waiting, so a client can't make the
// server buffer more than one socket read beyond what was asked for. Bytes left over on release are
// handed to the transmission phase (or pushed back under a TLS upgrade).

import type { Duplex } from 'node:stream';

/** The stream ended or failed before the requested bytes arrived. */
export class StreamClosedError extends Error {
  override readonly name = 'StreamClosedError';
}

/**
 * Removes the first `lengthBytes` bytes from a queue of received chunks (which must hold at least that
 * many) and returns them: a view of the first chunk when it holds them all, else a copy.
 */
export function takeBytes(chunks: Buffer[], lengthBytes: number): Buffer {
  const first = chunks[0];
  if (first && first.length >= lengthBytes) {
    if (first.length === lengthBytes) chunks.shift();
    else chunks[0] = first.subarray(lengthBytes);
    return first.subarray(0, lengthBytes);
  }
  const out = Buffer.allocUnsafe(lengthBytes);
  let filled = 0;
  while (filled < lengthBytes) {
    const chunk = chunks[0]!;
    const used = Math.min(chunk.length, lengthBytes - filled);
    chunk.copy(out, filled, 0, used);
    filled += used;
    if (used === chunk.length) chunks.shift();
    else chunks[0] = chunk.subarray(used);
  }
  return out;
}

export class ByteReader {
  private readonly stream: Duplex;
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private wanted = 0;
  private waiter: { resolve: () => void; reject: (err: Error) => void } | undefined;
  private ended: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    if (this.bufferedBytes >= this.wanted) {
      this.stream.pause();
      this.wake();
    }
  };
  private readonly onEnd = (): void => {
    this.ended ??= new StreamClosedError('the client closed the connection');
    this.wake();
  };
  private readonly onError = (err: Error): void => {
    this.ended ??= new StreamClosedError(`connection error: ${err.message}`);
    this.wake();
  };

  constructor(stream: Duplex, leftover?: Buffer) {
    this.stream = stream;
    if (leftover && leftover.length > 0) {
      this.chunks.push(leftover);
      this.bufferedBytes = leftover.length;
    }
    stream.pause();
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.bufferedBytes >= this.wanted) {
      this.waiter = undefined;
      waiter.resolve();
    } else if (this.ended) {
      this.waiter = undefined;
      waiter.reject(this.ended);
    }
  }

  private async fill(lengthBytes: number): Promise<void> {
    if (this.bufferedBytes >= lengthBytes) return;
    if (this.ended) throw this.ended;
    this.wanted = lengthBytes;
    await new Promise<void>((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.stream.resume();
    });
  }

  private take(lengthBytes: number): Buffer {
    const out = takeBytes(this.chunks, lengthBytes);
    this.bufferedBytes -= lengthBytes;
    return out;
  }

  /** Resolves with exactly `lengthBytes` bytes (the caller bounds the length); rejects on EOF. */
  async read(lengthBytes: number): Promise<Buffer> {
    await this.fill(lengthBytes);
    return this.take(lengthBytes);
  }

  /** Discards `lengthBytes` bytes in bounded steps (option data too large to keep). */
  async skip(lengthBytes: number): Promise<void> {
    let remaining = lengthBytes;
    while (remaining > 0) {
      const step = Math.min(remaining, 64 * 1024);
      await this.read(step);
      remaining -= step;
    }
  }

  /** Detaches from the stream (left paused) and returns bytes received but not consumed. */
  release(): Buffer {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.pause();
    const leftover = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [];
    this.bufferedBytes = 0;
    return leftover ?? Buffer.alloc(0);
  }
}
