// enlargeSendBuffer (issue 5): a unix-socket connection's SO_SNDBUF grows past the default that
// holds less than one 256 KiB READ reply; an object without a descriptor is left alone.

import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  enlargeSendBuffer,
  preloadSendBuffer,
  UNIX_SEND_BUFFER_BYTES,
} from '../../../src/nbd/send-buffer.ts';

const onLinux = process.platform === 'linux';

function sendBufferBytes(socket: Socket): number {
  const require = createRequire(import.meta.url);
  const koffi = require('koffi') as typeof import('koffi');
  const getsockopt = koffi
    .load('libc.so.6')
    .func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)') as (
    ...args: unknown[]
  ) => number;
  const value = Buffer.alloc(4);
  const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
  expect(getsockopt(fd, 1, 7, value, [4])).toBe(0);
  return new Int32Array(value.buffer, value.byteOffset, 1)[0]!;
}

describe.skipIf(!onLinux)('enlargeSendBuffer', () => {
  it("grows a unix socket's send buffer to what the kernel allows", async () => {
    const folder = await mkdtemp(join(tmpdir(), 'vdisk-sndbuf-'));
    const path = join(folder, 's.sock');
    let accepted: Socket | undefined;
    const server = createServer((socket) => {
      accepted = socket;
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const client = createConnection(path);
    try {
      await new Promise<void>((resolve) => client.once('connect', () => resolve()));
      while (!accepted) await new Promise((resolve) => setTimeout(resolve, 5));
      const before = sendBufferBytes(accepted);
      expect(enlargeSendBuffer(accepted)).toBe(true);
      const wmemMax = Number(readFileSync('/proc/sys/net/core/wmem_max', 'utf8'));
      // Linux doubles the request (bookkeeping) after capping it at wmem_max.
      expect(sendBufferBytes(accepted)).toBe(2 * Math.min(UNIX_SEND_BUFFER_BYTES, wmemMax));
      if (wmemMax > before) expect(sendBufferBytes(accepted)).toBeGreaterThan(before);
    } finally {
      client.destroy();
      accepted?.destroy();
      await new Promise((resolve) => server.close(resolve));
      await rm(folder, { recursive: true, force: true });
    }
  });

  it('loads setsockopt before any connection, as the server does before it listens', () => {
    expect(preloadSendBuffer()).toBe(true);
    expect(preloadSendBuffer()).toBe(true);
  });

  it('leaves an object without a descriptor alone', () => {
    expect(enlargeSendBuffer({})).toBe(false);
    expect(enlargeSendBuffer({ _handle: { fd: -1 } })).toBe(false);
  });
});
