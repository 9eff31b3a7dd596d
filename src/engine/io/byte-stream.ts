// Forward-only byte streams for images read from stdin or written to stdout (pipes: no seek, no size).
// ByteSource fills caller buffers exactly from an async iterable of chunks; ByteSink writes with
// backpressure so a slow reader downstream never makes the writer buffer the image in memory.

import type { Writable } from 'node:stream';
import { ImageIoError } from '../errors.ts';

/** Reads a chunk stream into caller-sized buffers; keeps at most one leftover chunk. */
export class ByteSource {
  readonly name: string;
  private readonly iterator: AsyncIterator<Uint8Array>;
  private leftover: Uint8Array | undefined;
  private ended = false;
  /** Bytes handed out so far: the stream offset of the next byte. */
  positionBytes = 0;

  constructor(chunks: AsyncIterable<Uint8Array>, name: string) {
    this.iterator = chunks[Symbol.asyncIterator]();
    this.name = name;
  }

  /**
   * Fills `buffer` from the stream; returns the count (short only at end of stream). Throws
   * ImageIoError when the underlying stream fails.
   */
  async readInto(buffer: Uint8Array): Promise<number> {
    let filled = 0;
    while (filled < buffer.length) {
      let chunk = this.leftover;
      this.leftover = undefined;
      if (!chunk) {
        if (this.ended) break;
        let step: IteratorResult<Uint8Array>;
        try {
          step = await this.iterator.next();
        } catch (err) {
          throw new ImageIoError({
            file: this.name,
            offsetBytes: this.positionBytes + filled,
            message: `reading the input stream failed: ${(err as Error).message}`,
            cause: err,
          });
        }
        if (step.done) {
          this.ended = true;
          break;
        }
        chunk = step.value;
      }
      const count = Math.min(chunk.length, buffer.length - filled);
      buffer.set(chunk.subarray(0, count), filled);
      filled += count;
      if (count < chunk.length) this.leftover = chunk.subarray(count);
    }
    this.positionBytes += filled;
    return filled;
  }

  /** Returns up to `lengthBytes` of what comes next without consuming it (for a format probe). */
  async peek(lengthBytes: number): Promise<Uint8Array> {
    const head = new Uint8Array(lengthBytes);
    const count = await this.readInto(head);
    this.positionBytes -= count;
    const rest = this.leftover;
    this.leftover = rest ? Buffer.concat([head.subarray(0, count), rest]) : head.subarray(0, count);
    if (count === 0 && !rest) this.leftover = undefined;
    return head.subarray(0, count);
  }

  /** Reads and drops `lengthBytes` (fewer at end of stream); returns the count dropped. */
  async skip(lengthBytes: number, scratch: Uint8Array): Promise<number> {
    let done = 0;
    while (done < lengthBytes) {
      const count = await this.readInto(scratch.subarray(0, Math.min(scratch.length, lengthBytes - done)));
      done += count;
      if (count === 0) break;
    }
    return done;
  }
}

/** Writes to a Node stream in order, waiting for 'drain' when its buffer is full. */
export class ByteSink {
  readonly name: string;
  private readonly stream: Writable;
  private failure: Error | undefined;
  /** Bytes written so far. */
  positionBytes = 0;

  constructor(stream: Writable, name: string) {
    this.stream = stream;
    this.name = name;
    stream.on('error', (err: Error) => {
      this.failure ??= err;
    });
  }

  private failed(err: Error): ImageIoError {
    const errno = (err as { code?: unknown }).code;
    return new ImageIoError({
      file: this.name,
      offsetBytes: this.positionBytes,
      errno: typeof errno === 'string' ? errno : undefined,
      message: `writing the output stream failed at offset ${this.positionBytes}: ${err.message}`,
      cause: err,
    });
  }

  /** Writes `data` (the sink may keep a reference until it drains: pass a buffer not reused). */
  async write(data: Uint8Array): Promise<void> {
    if (this.failure) throw this.failed(this.failure);
    if (data.length === 0) return;
    const accepted = this.stream.write(data);
    this.positionBytes += data.length;
    if (accepted) return;
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        this.stream.off('error', onError);
        resolve();
      };
      const onError = (err: Error): void => {
        this.stream.off('drain', onDrain);
        reject(this.failed(err));
      };
      this.stream.once('drain', onDrain);
      this.stream.once('error', onError);
    });
  }

  /** Writes `lengthBytes` zeros from a shared zero buffer (never allocating the whole run). */
  async writeZeros(lengthBytes: number, zeros: Uint8Array): Promise<void> {
    for (let done = 0; done < lengthBytes; ) {
      const count = Math.min(zeros.length, lengthBytes - done);
      // The zero buffer is shared and never written, so the sink may hold it while draining.
      await this.write(zeros.subarray(0, count));
      done += count;
    }
  }

  /**
   * Waits until everything written has been handed to the OS; with `close`, ends the stream too
   * (process.stdout must stay open, so the CLI passes false for it).
   */
  async finish(close: boolean): Promise<void> {
    if (this.failure) throw this.failed(this.failure);
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null): void => (err ? reject(this.failed(err)) : resolve());
      if (close) this.stream.end(done);
      else this.stream.write(new Uint8Array(0), done);
    });
  }
}
