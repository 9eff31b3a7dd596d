// The transmission phase (proto.md "Transmission", "Request types", "Structured reply chunk message"):
// decode requests from the stream, run several at once on the backend, send simple or structured
// replies (header and payload corked into one writev). READs whose bytes sit in the host page cache
// are answered synchronously as they are decoded. Memory is bounded: decoding stops while too many
// requests or bytes are in flight or too many reply bytes wait in the socket.

import type { Duplex } from 'node:stream';
import {
  baseAllocationFlags,
  CONTEXT_BASE_ALLOCATION,
  type ContextName,
  MAX_PAYLOAD_BYTES,
  MAX_STATUS_DESCRIPTORS,
  type NbdBackend,
  NbdCommandError,
  splitZeroRuns,
  toNbdError,
} from './backend.ts';
import { giveBuffer, takeBuffer } from './buffer-pool.ts';
import type { ByteBudget } from './byte-budget.ts';
import type { NegotiatedSession } from './handshake.ts';
import {
  type BlockStatusDescriptor,
  decodeRequest,
  encodeBlockStatus,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeSimpleReply,
  encodeStructuredError,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_REPLY_FLAG_DONE,
  NBD_REQUEST_MAGIC,
  REQUEST_BYTES,
  type Request,
} from './wire.ts';

/** Per-connection limits on concurrent work (requests decoded but not yet answered). */
export interface TransmissionLimits {
  /** Requests running at once (default 64: nbdcopy keeps 64 in flight per connection). */
  maxInFlightRequests: number;
  /**
   * Read lengths plus write payloads running at once (default 32 MiB; one larger request may run
   * alone). With MAX_QUEUED_REPLY_BYTES this bounds a connection's memory to about 40 MiB; the
   * server-wide ByteBudget bounds the in-flight part across all connections.
   */
  maxInFlightBytes: number;
}

/**
 * Reply bytes queued in the socket beyond which no new request is started, and the level it must
 * fall back to before they start again. Waiting for an empty queue ('drain') instead would leave the
 * client nothing to read while the next requests are read from the image.
 */
const MAX_QUEUED_REPLY_BYTES = 4 * 1024 * 1024;
const RESUME_QUEUED_REPLY_BYTES = 2 * 1024 * 1024;
/**
 * Corked reply bytes that are written at once rather than at the end of the event-loop turn: small
 * replies still share one writev, while a turn answering many cached reads starts feeding the socket
 * after the first instead of after the last.
 */
const UNCORK_BYTES = 256 * 1024;

export const DEFAULT_LIMITS: TransmissionLimits = {
  maxInFlightRequests: 64,
  maxInFlightBytes: 32 * 1024 * 1024,
};

/** Minimal logger (pino's shape): data-path lines at debug, control-path at info/warn. */
export interface NbdLogger {
  debug(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  /** A logger adding `fields` to every line (pino's child); the server makes one per connection. */
  child?(fields: Record<string, unknown>): NbdLogger;
}

export const silentLogger: NbdLogger = { debug() {}, info() {}, warn() {} };

/** Flags each command accepts (proto.md "Command flags"); anything else is EINVAL. */
const ALLOWED_FLAGS: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: 0xffff,
  [NBD_CMD_FLUSH]: 0,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: 0,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_REQ_ONE,
};

const WRITE_COMMANDS = new Set([NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]);

/** A write payload still arriving, or an oversized one being thrown away. */
interface PendingPayload {
  request: Request;
  /** Bytes still to receive (to discard) or, when buffering, the whole payload length. */
  remainingBytes: number;
  /** An oversized payload being thrown away as it arrives. */
  discard: boolean;
  /**
   * With borrowed reads: the pooled buffer the payload is gathered in as it arrives, and how much of
   * it is filled. Absent until a read ends inside the payload.
   */
  payload?: Buffer;
  filledBytes?: number;
}

/**
 * Borrowed reads (static-read.ts) gather a payload split across reads straight into its pooled buffer
 * up to this size; a larger one (rare: nbdcopy, qemu and the kernel send at most a few MiB) is held as
 * copies of what has arrived, so a header claiming 32 MiB still costs only what the client sent.
 */
const MAX_GATHERED_PAYLOAD_BYTES = 4 * 1024 * 1024;

/** A source of borrowed reads: views of one reused buffer, valid only during the call (static-read.ts). */
export interface BorrowedReads {
  setSink(sink: (bytes: Buffer) => void): void;
}

/** One connection in transmission: start() resolves when the connection has closed. */
export class TransmissionSession {
  private readonly socket: Duplex;
  private readonly backend: NbdBackend;
  private readonly structured: boolean;
  private readonly contexts: Map<number, ContextName>;
  private readonly limits: TransmissionLimits;
  private readonly log: NbdLogger;
  private readonly budget: ByteBudget | undefined;
  /** Input arrives as views of a buffer the next read overwrites: nothing may keep one past receive(). */
  private readonly borrowedReads: BorrowedReads | undefined;
  private readonly onBudgetRoom = (): void => this.pump();
  private corked = false;
  private corkedBytes = 0;
  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private pending: PendingPayload | undefined;
  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private waitingForDrain = false;
  /** No more requests are taken (DISC, shutdown, end of stream, fatal error). */
  private stopped = false;
  private wroteSinceFlush = false;
  private closing: Promise<void> | undefined;
  private idleWaiters: (() => void)[] = [];
  private closed: Promise<void>;

  constructor(
    session: NegotiatedSession,
    options: {
      limits?: Partial<TransmissionLimits>;
      log?: NbdLogger;
      budget?: ByteBudget;
      /** Where the socket's bytes come from instead of its 'data' events (server.ts, plain sockets). */
      borrowedReads?: BorrowedReads;
    } = {},
  ) {
    this.budget = options.budget;
    this.borrowedReads = options.borrowedReads;
    this.socket = session.socket;
    this.backend = session.backend;
    this.structured = session.structuredReplies;
    this.contexts = session.contexts;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.log = options.log ?? silentLogger;
    if (session.leftover.length > 0) {
      this.chunks.push(session.leftover);
      this.bufferedBytes = session.leftover.length;
    }
    this.closed = new Promise((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  /** Runs the request loop; resolves once the connection is closed (after in-flight work finished). */
  async start(): Promise<void> {
    if (this.borrowedReads) this.borrowedReads.setSink((bytes) => this.receive(bytes, true));
    else this.socket.on('data', (chunk: Buffer) => this.receive(chunk, false));
    this.socket.on('end', () => void this.shutdown('client closed the stream'));
    this.socket.on('error', (err: Error) => {
      this.log.warn({ err }, 'Connection failed');
      this.stopped = true;
    });
    this.socket.on('drain', () => {
      this.waitingForDrain = false;
      this.pump();
    });
    this.budget?.watch(this.onBudgetRoom);
    this.pump();
    this.socket.resume();
    await this.closed;
    this.budget?.forget(this.onBudgetRoom);
    // The socket is gone; requests still running finish against the device before we report done.
    await this.idle();
  }

  /**
   * Stops taking requests, lets the running ones finish and reply, flushes if this connection wrote,
   * then closes the stream (graceful shutdown and NBD_CMD_DISC).
   */
  shutdown(reason: string): Promise<void> {
    if (this.closing) return this.closing;
    this.stopped = true;
    this.log.info({ reason }, 'Closing connection');
    this.closing = (async () => {
      await this.idle();
      if (this.wroteSinceFlush && !this.backend.isReadOnly) {
        await this.backend.flush().catch((err: unknown) => this.log.warn({ err }, 'Flush on close failed'));
      }
      if (!this.socket.destroyed) this.socket.end();
      // A client that never reads the rest of its replies must not hold the connection open forever.
      const timer = setTimeout(() => this.socket.destroy(), 10_000);
      timer.unref();
      await this.closed;
      clearTimeout(timer);
    })();
    return this.closing;
  }

  private idle(): Promise<void> {
    if (this.inFlightRequests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private fatal(message: string, fields: Record<string, unknown> = {}): void {
    this.log.warn(fields, message);
    this.stopped = true;
    this.socket.destroy();
  }

  private receive(chunk: Buffer, borrowed: boolean): void {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    this.pump();
    if (borrowed && this.bufferedBytes > 0) this.keepBorrowedBytes();
  }

  /**
   * The next read overwrites the borrowed buffer: what pump() left in it moves out now. Bytes of a
   * payload still arriving go into its pooled buffer; anything else (part of a request header,
   * requests waiting for the in-flight limits, the first part of a payload of which less than half
   * is here, part of a payload too large to gather) is copied.
   */
  private keepBorrowedBytes(): void {
    const pending = this.pending;
    // The payload's buffer is taken once at least half of it is here, so memory stays within twice
    // what the client sent, whatever its header claims (a stalled 4 MiB header costs no 4 MiB).
    if (
      pending &&
      !pending.discard &&
      pending.request.lengthBytes <= MAX_GATHERED_PAYLOAD_BYTES &&
      (pending.payload !== undefined || this.bufferedBytes * 2 >= pending.request.lengthBytes)
    ) {
      // pump() leaves a pending payload only while fewer bytes than it needs are here: all are its.
      if (!pending.payload) {
        pending.payload = takeBuffer(pending.request.lengthBytes);
        pending.filledBytes = 0;
      }
      const filledBytes = pending.filledBytes ?? 0;
      const movedBytes = this.bufferedBytes;
      this.fillFromChunks(pending.payload, filledBytes, movedBytes);
      pending.filledBytes = filledBytes + movedBytes;
      return;
    }
    this.chunks = [Buffer.concat(this.chunks, this.bufferedBytes)];
  }

  private canDispatch(): boolean {
    if (this.waitingForDrain || this.inFlightRequests >= this.limits.maxInFlightRequests) return false;
    if (this.inFlightRequests === 0) return true;
    return this.inFlightBytes < this.limits.maxInFlightBytes && (this.budget?.hasRoom ?? true);
  }

  private take(lengthBytes: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= lengthBytes) {
      this.bufferedBytes -= lengthBytes;
      if (first.length === lengthBytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(lengthBytes);
      return first.subarray(0, lengthBytes);
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    this.fillFromChunks(out, 0, lengthBytes);
    return out;
  }

  /** Moves `lengthBytes` buffered bytes into `target` at `at` (or drops them when `target` is undefined). */
  private fillFromChunks(target: Buffer | undefined, at: number, lengthBytes: number): void {
    let moved = 0;
    while (moved < lengthBytes) {
      const chunk = this.chunks[0]!;
      const used = Math.min(chunk.length, lengthBytes - moved);
      if (target) chunk.copy(target, at + moved, 0, used);
      moved += used;
      if (used === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(used);
    }
    this.bufferedBytes -= lengthBytes;
  }

  /** Decodes as many requests as the limits allow; pauses the socket when they don't. */
  private pump(): void {
    while (!this.stopped) {
      const pending = this.pending;
      if (pending) {
        if (pending.discard) {
          const step = Math.min(pending.remainingBytes, this.bufferedBytes);
          this.fillFromChunks(undefined, 0, step);
          pending.remainingBytes -= step;
          if (pending.remainingBytes > 0) break;
          this.pending = undefined;
          this.dispatchError(
            pending.request,
            new NbdCommandError(NBD_EINVAL, `write payload larger than ${MAX_PAYLOAD_BYTES} bytes`),
          );
          continue;
        }
        if (pending.payload) {
          const filledBytes = pending.filledBytes ?? 0;
          const stepBytes = Math.min(pending.request.lengthBytes - filledBytes, this.bufferedBytes);
          this.fillFromChunks(pending.payload, filledBytes, stepBytes);
          pending.filledBytes = filledBytes + stepBytes;
          if (pending.filledBytes < pending.request.lengthBytes) break;
          this.pending = undefined;
          this.dispatch(pending.request, pending.payload, true);
          continue;
        }
        // The payload buffer is made only once every byte is here (or, with borrowed reads, once some
        // are): memory follows what the client actually sent, never the length its header claims.
        if (this.bufferedBytes < pending.remainingBytes) break;
        this.pending = undefined;
        this.dispatchWrite(pending.request);
        continue;
      }
      if (!this.canDispatch()) {
        this.socket.pause();
        return;
      }
      if (this.bufferedBytes < REQUEST_BYTES) break;
      const request = decodeRequest(this.take(REQUEST_BYTES));
      if (request.magic !== NBD_REQUEST_MAGIC) {
        this.fatal('Bad request magic, disconnecting', { magic: request.magic });
        return;
      }
      if (request.type === NBD_CMD_WRITE) {
        // Oversized payloads are read and dropped as they arrive (never buffered), then refused.
        this.pending = {
          request,
          remainingBytes: request.lengthBytes,
          discard: request.lengthBytes > MAX_PAYLOAD_BYTES,
        };
        continue;
      }
      if (request.type === NBD_CMD_DISC) {
        void this.shutdown('client sent NBD_CMD_DISC');
        return;
      }
      if (this.isPlainRead(request)) this.startRead(request);
      else this.dispatch(request, undefined);
    }
    if (!this.stopped && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * Hands a complete write payload out of the receive chunks: a slice when it sits in one (never with
   * borrowed reads: the device would see the next read's bytes), else a pooled copy.
   */
  private dispatchWrite(request: Request): void {
    const lengthBytes = request.lengthBytes;
    if (lengthBytes === 0) {
      this.dispatch(request, Buffer.alloc(0));
    } else if (!this.borrowedReads && this.chunks[0]!.length >= lengthBytes) {
      this.dispatch(request, this.take(lengthBytes));
    } else {
      const payload = takeBuffer(lengthBytes);
      this.fillFromChunks(payload, 0, lengthBytes);
      this.dispatch(request, payload, true);
    }
  }

  private dispatchError(request: Request, error: NbdCommandError): void {
    this.track(request, 0, async () => this.sendError(request, error));
  }

  /** Runs one request; a `pooled` payload goes back to the buffer pool once the device has it. */
  private dispatch(request: Request, payload: Buffer | undefined, pooled = false): void {
    const bytes = request.type === NBD_CMD_READ ? request.lengthBytes : (payload?.length ?? 0);
    this.track(request, bytes, async () => {
      try {
        await this.execute(request, payload);
      } catch (err) {
        await this.sendError(request, toNbdError(err));
      } finally {
        if (pooled && payload) giveBuffer(payload);
      }
    });
  }

  private track(request: Request, bytes: number, body: () => Promise<void>): void {
    this.inFlightRequests++;
    this.inFlightBytes += bytes;
    this.budget?.take(bytes);
    body()
      .catch((err: unknown) => this.fatal('Request handling failed', { err, type: request.type }))
      .finally(() => {
        this.inFlightRequests--;
        this.inFlightBytes -= bytes;
        this.budget?.give(bytes);
        if (this.inFlightRequests === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const resolve of waiters) resolve();
        }
        this.pump();
      });
  }

  /**
   * A READ that passes every check execute() makes (flags, range, length), so it can be answered
   * here; anything else goes through execute(), which answers the error.
   */
  private isPlainRead(request: Request): boolean {
    return (
      request.type === NBD_CMD_READ &&
      (request.flags & ~NBD_CMD_FLAG_DF) === 0 &&
      (this.structured || request.flags === 0) &&
      !request.offsetOverflow &&
      request.lengthBytes > 0 &&
      request.lengthBytes <= MAX_PAYLOAD_BYTES &&
      request.offsetBytes + request.lengthBytes <= this.backend.sizeBytes
    );
  }

  /**
   * A valid READ: answered at once when the host page cache holds its bytes (no promise, no thread-pool
   * round trip: this is most of a streaming read's cost otherwise); the rest is read asynchronously.
   */
  private startRead(request: Request): void {
    this.log.debug(
      { type: request.type, offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes },
      'Request',
    );
    const buffer = takeBuffer(request.lengthBytes);
    const release = (): void => giveBuffer(buffer);
    const filledBytes = this.backend.readNow(request.offsetBytes, buffer);
    if (filledBytes === buffer.length) {
      this.sendReadReply(request, buffer, release);
      return;
    }
    this.track(request, request.lengthBytes, async () => {
      try {
        await this.backend.read(request.offsetBytes + filledBytes, buffer.subarray(filledBytes));
      } catch (err) {
        release();
        await this.sendError(request, toNbdError(err));
        return;
      }
      this.sendReadReply(request, buffer, release);
    });
  }

  /** Validates flags and range, then runs one command and sends its reply. */
  private async execute(request: Request, payload: Buffer | undefined): Promise<void> {
    const { type, flags, offsetBytes, lengthBytes, cookie } = request;
    const allowed = ALLOWED_FLAGS[type];
    if (allowed === undefined) throw new NbdCommandError(NBD_EINVAL, `unknown command ${type}`);
    if ((flags & ~allowed) !== 0)
      throw new NbdCommandError(NBD_EINVAL, `flags 0x${flags.toString(16)} not valid for command ${type}`);
    if ((flags & NBD_CMD_FLAG_DF) !== 0 && !this.structured)
      throw new NbdCommandError(NBD_EINVAL, 'DF without structured replies');
    const isWrite = WRITE_COMMANDS.has(type);
    if (isWrite && this.backend.isReadOnly) throw new NbdCommandError(NBD_EPERM, 'the export is read-only');
    if (request.offsetOverflow)
      throw new NbdCommandError(isWrite ? NBD_ENOSPC : NBD_EINVAL, 'offset past the end of the export');
    const fua = (flags & NBD_CMD_FLAG_FUA) !== 0;
    this.log.debug({ type, offsetBytes, lengthBytes, flags }, 'Request');

    switch (type) {
      case NBD_CMD_READ:
        if (lengthBytes === 0) throw new NbdCommandError(NBD_EINVAL, 'zero-length read');
        if (lengthBytes > MAX_PAYLOAD_BYTES) {
          throw new NbdCommandError(
            this.structured ? NBD_EOVERFLOW : NBD_EINVAL,
            `read longer than ${MAX_PAYLOAD_BYTES} bytes`,
          );
        }
        await this.sendRead(request);
        return;
      case NBD_CMD_WRITE:
        this.wroteSinceFlush = true;
        await this.backend.write(offsetBytes, payload ?? Buffer.alloc(0), fua);
        break;
      case NBD_CMD_FLUSH:
        await this.backend.flush();
        this.wroteSinceFlush = false;
        break;
      case NBD_CMD_TRIM:
        this.wroteSinceFlush = true;
        await this.backend.trim(offsetBytes, lengthBytes, fua);
        break;
      case NBD_CMD_CACHE:
        await this.backend.cache(offsetBytes, lengthBytes);
        break;
      case NBD_CMD_WRITE_ZEROES:
        this.wroteSinceFlush = true;
        await this.backend.writeZeroes(offsetBytes, lengthBytes, {
          fua,
          noHole: (flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
          fastZero: (flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
        break;
      case NBD_CMD_BLOCK_STATUS:
        await this.sendBlockStatus(request);
        return;
    }
    this.send([encodeSimpleReply(0, cookie)]);
  }

  /** READ into a pooled buffer, returned to the pool once the socket has written it. */
  private async sendRead(request: Request): Promise<void> {
    const buffer = takeBuffer(request.lengthBytes);
    try {
      await this.backend.read(request.offsetBytes, buffer);
    } catch (err) {
      giveBuffer(buffer);
      throw err;
    }
    this.sendReadReply(request, buffer, () => giveBuffer(buffer));
  }

  /** The reply to a READ whose bytes are in `data`; `written` runs once, when the socket is done with `data`. */
  private sendReadReply(request: Request, data: Buffer, written: () => void): void {
    let released = false;
    const releaseOnce = (): void => {
      if (released) return;
      released = true;
      written();
    };
    this.sendReplyBuffers(request, data, releaseOnce);
    // Nothing queued: the reply left in a synchronous writev and the kernel has its bytes. Handing the
    // buffer back now (not in the write callback, after this turn) lets the next READ decoded in this
    // turn reuse it while it is still in the CPU cache, rather than cycling through 64 cold buffers.
    if (this.socket.writableLength === 0) releaseOnce();
  }

  /**
   * Structured: OFFSET_DATA / OFFSET_HOLE chunks (zero runs become holes unless DF), the last flagged
   * DONE; simple: header then the bytes.
   */
  private sendReplyBuffers(request: Request, data: Buffer, written: () => void): void {
    if (!this.structured) {
      this.send([encodeSimpleReply(0, request.cookie), data], written);
      return;
    }
    const dontFragment = (request.flags & NBD_CMD_FLAG_DF) !== 0;
    const segments = splitZeroRuns(request.offsetBytes, data, dontFragment);
    const replies: Buffer[] = [];
    segments.forEach((segment, index) => {
      const flags = index === segments.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if (segment.kind === 'hole') {
        replies.push(encodeOffsetHole(flags, request.cookie, segment.offsetBytes, segment.lengthBytes));
      } else {
        replies.push(
          encodeOffsetDataHeader(flags, request.cookie, segment.offsetBytes, segment.data.length),
          segment.data,
        );
      }
    });
    this.send(replies, written);
  }

  /** BLOCK_STATUS: one chunk per selected context; REQ_ONE answers with a single descriptor. */
  private async sendBlockStatus(request: Request): Promise<void> {
    if (!this.structured || this.contexts.size === 0) {
      throw new NbdCommandError(NBD_EINVAL, 'block status needs a negotiated metadata context');
    }
    if (request.lengthBytes === 0) throw new NbdCommandError(NBD_EINVAL, 'zero-length block status');
    const reqOne = (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    const extents = await this.backend.blockStatus(
      request.offsetBytes,
      request.lengthBytes,
      MAX_STATUS_DESCRIPTORS,
    );
    const buffers: Buffer[] = [];
    let index = 0;
    for (const [contextId, name] of this.contexts) {
      const descriptors: BlockStatusDescriptor[] = [];
      for (const extent of extents) {
        const statusFlags = name === CONTEXT_BASE_ALLOCATION ? baseAllocationFlags(extent) : extent.depth;
        const last = descriptors[descriptors.length - 1];
        if (last && last.statusFlags === statusFlags) last.lengthBytes += extent.lengthBytes;
        else descriptors.push({ lengthBytes: extent.lengthBytes, statusFlags });
      }
      if (reqOne) descriptors.length = Math.min(descriptors.length, 1);
      index++;
      const flags = index === this.contexts.size ? NBD_REPLY_FLAG_DONE : 0;
      buffers.push(encodeBlockStatus(flags, request.cookie, contextId, descriptors));
    }
    this.send(buffers);
  }

  private async sendError(request: Request, error: NbdCommandError): Promise<void> {
    this.log.debug({ type: request.type, nbdError: error.nbdError, err: error }, 'Request failed');
    if (this.structured && (request.type === NBD_CMD_READ || request.type === NBD_CMD_BLOCK_STATUS)) {
      this.send([encodeStructuredError(NBD_REPLY_FLAG_DONE, request.cookie, error.nbdError, error.message)]);
    } else {
      this.send([encodeSimpleReply(error.nbdError, request.cookie)]);
    }
  }

  /**
   * Writes one reply's buffers back to back (corked: one writev), noting backpressure. `written`
   * runs once the socket is done with the buffers (or has failed).
   */
  private send(buffers: Buffer[], written?: () => void): void {
    if (this.socket.destroyed || this.socket.writableEnded) {
      written?.();
      return;
    }
    // Replies finishing in the same event-loop turn leave in one writev: corked until setImmediate.
    if (!this.corked) {
      this.corked = true;
      this.corkedBytes = 0;
      this.socket.cork();
      setImmediate(this.uncork);
    }
    const last = buffers.length - 1;
    buffers.forEach((buffer, index) => {
      this.corkedBytes += buffer.length;
      if (index === last)
        this.socket.write(buffer, () => {
          written?.();
          this.replyWritten();
        });
      else this.socket.write(buffer);
    });
    if (this.socket.writableLength > MAX_QUEUED_REPLY_BYTES) this.waitingForDrain = true;
    if (this.corkedBytes >= UNCORK_BYTES) {
      this.corkedBytes = 0;
      this.socket.uncork();
      this.socket.cork();
    }
  }

  private replyWritten(): void {
    if (this.waitingForDrain && this.socket.writableLength <= RESUME_QUEUED_REPLY_BYTES) {
      this.waitingForDrain = false;
      this.pump();
    }
  }
}
