// A larger kernel send buffer for unix-socket connections. A unix stream socket's default (212992
// bytes, net.core.wmem_default) holds less than one 256 KiB READ reply, so every reply takes several
// write / wake the client / wait for room / wake the server turns; room for a few replies lets the
// server write whole replies and the client read several per wake-up. Node has no API for SO_SNDBUF
// on stream sockets, so setsockopt(2) is called through koffi, as engine/io/native.ts calls lseek.
// TCP is left alone: setting SO_SNDBUF there would switch off the kernel's own buffer auto-tuning.

import { createRequire } from 'node:module';

/** Requested send buffer; Linux doubles it for bookkeeping and caps it at net.core.wmem_max. */
export const UNIX_SEND_BUFFER_BYTES = 2 * 1024 * 1024;

/** <asm-generic/socket.h> */
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;

type SetSockOpt = (fd: number, level: number, name: number, value: Buffer, length: number) => number;

let setsockopt: SetSockOpt | undefined;
let attempted = false;

function load(): SetSockOpt | undefined {
  if (process.platform !== 'linux' || process.env.VDISK_NO_NATIVE === '1') return undefined;
  const require = createRequire(import.meta.url);
  const koffi = require('koffi') as typeof import('koffi');
  return koffi
    .load('libc.so.6')
    .func('int setsockopt(int fd, int level, int name, const void *value, uint32_t length)') as SetSockOpt;
}

/**
 * The descriptor under a net.Socket, where there is one: `_handle.fd` is Node's own (undocumented but
 * long-standing) field, so anything unexpected just means "leave the buffer as it is".
 */
function descriptorOf(socket: object): number | undefined {
  const handle = (socket as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/**
 * Loads the FFI now (koffi's first load takes ~8-10 ms), so a server does it before it listens rather
 * than inside its first client's first request; true when setsockopt is there.
 */
export function preloadSendBuffer(): boolean {
  if (!attempted) {
    attempted = true;
    try {
      setsockopt = load();
    } catch {
      setsockopt = undefined;
    }
  }
  return setsockopt !== undefined;
}

/** Asks for UNIX_SEND_BUFFER_BYTES of send buffer on a connected unix socket; true when the kernel took it. */
export function enlargeSendBuffer(socket: object): boolean {
  preloadSendBuffer();
  const fd = descriptorOf(socket);
  if (!setsockopt || fd === undefined) return false;
  // An int in the host's byte order.
  const value = Buffer.from(new Int32Array([UNIX_SEND_BUFFER_BYTES]).buffer);
  return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, value, value.length) === 0;
}
