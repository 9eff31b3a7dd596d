// The transmission phase of a plain (unix or TCP, not TLS) connection reads into one reused buffer
// per connection (net.Socket's `onread` option) instead of a new 64 KiB Buffer per read (issue 5).
// Write payloads stream in at hundreds of MiB/s; as separate Buffers they are external memory that
// only a garbage collection frees, and V8 answers that churn with a full mark-compact every ~64 MiB:
// measured, a third of the NBD layer's CPU on a 512 MiB nbdcopy write. `onread` is only offered for
// sockets Node creates itself, so the accepted connection moves to a new net.Socket on a dup(2) of its
// descriptor once the handshake is over; the old socket is closed in the same turn (it reads nothing
// more: libuv only reads between turns), after whatever it had buffered is handed on first.

import { createRequire } from 'node:module';
import { Socket } from 'node:net';

/** One read's worth: how many bytes a read may return at once (a few requests or a write payload). */
export const STATIC_READ_BUFFER_BYTES = 256 * 1024;

interface DescriptorCalls {
  dup(fd: number): number;
  close(fd: number): number;
}

let calls: DescriptorCalls | undefined;
let attempted = false;

function load(): DescriptorCalls | undefined {
  if (process.platform !== 'linux' || process.env.VDISK_NO_NATIVE === '1') return undefined;
  const require = createRequire(import.meta.url);
  const koffi = require('koffi') as typeof import('koffi');
  const libc = koffi.load('libc.so.6');
  return {
    dup: libc.func('int dup(int fd)') as DescriptorCalls['dup'],
    close: libc.func('int close(int fd)') as DescriptorCalls['close'],
  };
}

/** Loads the FFI now (the server does before it listens); true when dup(2) is there. */
export function preloadStaticRead(): boolean {
  if (!attempted) {
    attempted = true;
    try {
      calls = load();
    } catch {
      calls = undefined;
    }
  }
  return calls !== undefined;
}

/** The descriptor under a net.Socket (Node's long-standing `_handle.fd`), if it has one. */
function descriptorOf(socket: Socket): number | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/** Where a moved connection's bytes go: a view of the reused buffer, valid only during the call. */
export type BorrowedBytesSink = (bytes: Buffer) => void;

export interface MovedConnection {
  socket: Socket;
  /** Bytes the old socket had received but nobody had read yet: they come before any `sink` call. */
  buffered: Buffer;
  /** Where the new socket's reads go from now on (bytes read before are held, in copies, until then). */
  setSink(sink: BorrowedBytesSink): void;
}

/**
 * Moves a connected, paused plain socket (no 'data' listener) to a new net.Socket that reads into one
 * reused buffer, and closes the old one. Returns undefined, leaving `socket` untouched, where that is
 * not possible (no FFI, no descriptor, writes still queued, dup failed).
 */
export function moveToStaticReads(socket: Socket): MovedConnection | undefined {
  // Destroying the old socket would drop replies still queued in it (a client that has not read its
  // handshake replies yet): such a connection stays where it is.
  if (!preloadStaticRead() || socket.destroyed || socket.writableLength > 0) return undefined;
  const fd = descriptorOf(socket);
  if (fd === undefined) return undefined;
  const copy = calls!.dup(fd);
  if (copy < 0) return undefined;
  const pending: Buffer[] = [];
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null)
    pending.push(chunk);
  let sink: BorrowedBytesSink | undefined;
  const early: Buffer[] = [];
  let moved: Socket;
  try {
    moved = new Socket({
      fd: copy,
      readable: true,
      writable: true,
      allowHalfOpen: true,
      onread: {
        buffer: Buffer.allocUnsafeSlow(STATIC_READ_BUFFER_BYTES),
        callback: (bytes: number, buffer: Uint8Array): boolean => {
          const view = Buffer.from(buffer.buffer, buffer.byteOffset, bytes);
          if (sink) sink(view);
          else early.push(Buffer.from(view));
          return true;
        },
      },
    });
  } catch {
    // Nothing took the copy: close it, and carry on with the old socket and its buffered bytes.
    calls!.close(copy);
    for (const chunk of pending.reverse()) socket.unshift(chunk);
    return undefined;
  }
  moved.setNoDelay(true);
  socket.destroy();
  return {
    socket: moved,
    buffered: pending.length === 1 ? pending[0]! : Buffer.concat(pending),
    setSink(next) {
      sink = next;
      for (const bytes of early.splice(0)) next(bytes);
    },
  };
}
