// moveToStaticReads (issue 5): a plain connection moves to a socket that reads into one reused buffer;
// bytes the old socket had buffered come first, nothing is lost or reordered, and the old socket is
// closed while the connection stays up.

import { mkdtemp, rm } from 'node:fs/promises';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { moveToStaticReads, STATIC_READ_BUFFER_BYTES } from '../../../src/nbd/static-read.ts';

/** A connected unix-socket pair: the server side accepted and paused, as the NBD server leaves it. */
async function connectedPair(): Promise<{ accepted: Socket; client: Socket; close: () => Promise<void> }> {
  const folder = await mkdtemp(join(tmpdir(), 'vdisk-static-read-'));
  const path = join(folder, 's.sock');
  let accepted: Socket | undefined;
  const server = createServer((socket) => {
    accepted = socket;
    socket.pause();
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const client = createConnection(path);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  while (!accepted) await new Promise((resolve) => setTimeout(resolve, 5));
  const socket: Socket = accepted;
  return {
    accepted: socket,
    client,
    close: async () => {
      client.destroy();
      socket.destroy();
      await new Promise((resolve) => server.close(resolve));
      await rm(folder, { recursive: true, force: true });
    },
  };
}

describe.skipIf(process.platform !== 'linux')('moveToStaticReads', () => {
  it('hands on buffered bytes, then every later byte in order through one reused buffer', async () => {
    const { accepted, client, close } = await connectedPair();
    try {
      const first = Buffer.from('before the move');
      client.write(first);
      // Let the old socket read it into its own (paused) buffer.
      while (accepted.readableLength < first.length) await new Promise((resolve) => setTimeout(resolve, 5));

      const moved = moveToStaticReads(accepted);
      expect(moved).toBeDefined();
      expect(moved!.buffered.equals(first)).toBe(true);
      expect(accepted.destroyed).toBe(true);

      const later = Buffer.alloc(3 * STATIC_READ_BUFFER_BYTES + 12345);
      for (let at = 0; at < later.length; at++) later[at] = (at * 7 + (at >> 10)) & 0xff;
      const received: Buffer[] = [];
      const memories = new Set<ArrayBufferLike>();
      let receivedBytes = 0;
      const done = new Promise<void>((resolve) => {
        moved!.setSink((bytes) => {
          memories.add(bytes.buffer);
          received.push(Buffer.from(bytes));
          receivedBytes += bytes.length;
          if (receivedBytes === later.length) resolve();
        });
      });
      client.write(later);
      await done;
      expect(Buffer.concat(received).equals(later)).toBe(true);
      // Every read landed in the same memory: no allocation per read.
      expect(memories.size).toBe(1);
      // The connection survived the old socket's close: the moved one can answer.
      moved!.socket.write('reply');
      const reply = await new Promise<Buffer>((resolve) => client.once('data', resolve));
      expect(reply.toString()).toBe('reply');
      moved!.socket.destroy();
    } finally {
      await close();
    }
  });

  it('leaves a socket with writes still queued alone (moving it would drop them)', async () => {
    const { accepted, client, close } = await connectedPair();
    try {
      client.pause();
      // More than the kernel buffers hold while the client reads nothing: the rest waits in Node.
      while (accepted.writableLength === 0) accepted.write(Buffer.alloc(1024 * 1024));
      expect(moveToStaticReads(accepted)).toBeUndefined();
      expect(accepted.destroyed).toBe(false);
    } finally {
      await close();
    }
  });

  it('leaves a socket without a descriptor alone', () => {
    const detached = createConnection({ path: '/nonexistent/vdisk.sock' });
    detached.on('error', () => undefined);
    detached.destroy();
    expect(moveToStaticReads(detached)).toBeUndefined();
  });
});
