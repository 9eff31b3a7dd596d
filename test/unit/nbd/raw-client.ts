// A byte-level NBD client for tests that must send what real clients refuse to: malformed options
// and requests, pipelined writes, unread replies. Built on the server's own wire encoders.

import { connect, type Socket } from 'node:net';
import { takeBytes } from '../../../src/nbd/byte-reader.ts';
import {
  encodeRequest,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
} from '../../../src/nbd/wire.ts';

/** A connected socket with an accumulating receive buffer. */
export class RawClient {
  readonly socket: Socket;
  private chunks: Buffer[] = [];
  private receivedBytes = 0;
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.receivedBytes += chunk.length;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }

  static connect(socketPath: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(socketPath, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Resolves with exactly `lengthBytes` bytes, or rejects once the server closed without them. */
  async read(lengthBytes: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.receivedBytes < lengthBytes) {
      if (this.closed) throw new Error(`connection closed with ${this.receivedBytes}/${lengthBytes} bytes`);
      if (Date.now() > deadline) throw new Error('timed out waiting for the server');
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    const out = takeBytes(this.chunks, lengthBytes);
    this.receivedBytes -= lengthBytes;
    return out;
  }

  /** Waits until the server closes the connection (true) or `timeoutMs` passes (false). */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}

export function option(optionCode: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  header.writeUInt32BE(optionCode, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

/** GO / INFO option data: the export name, then the information types asked for. */
export function infoRequestData(exportName: string, types: number[]): Buffer {
  const nameBytes = Buffer.from(exportName);
  const out = Buffer.alloc(4 + nameBytes.length + 2 + types.length * 2);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  out.writeUInt16BE(types.length, 4 + nameBytes.length);
  types.forEach((type, index) => {
    out.writeUInt16BE(type, 6 + nameBytes.length + index * 2);
  });
  return out;
}

/** LIST_META_CONTEXT / SET_META_CONTEXT option data: the export name, then the queries. */
export function metaContextRequestData(exportName: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(exportName), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(exportName), 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const query of queries) {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(Buffer.byteLength(query), 0);
    parts.push(length, Buffer.from(query));
  }
  return Buffer.concat(parts);
}

/** Reads one option reply; returns its type and data. */
export async function readOptionReply(
  client: RawClient,
): Promise<{ option: number; type: number; data: Buffer }> {
  const header = await client.read(20);
  const lengthBytes = header.readUInt32BE(16);
  return {
    option: header.readUInt32BE(8),
    type: header.readUInt32BE(12),
    data: await client.read(lengthBytes),
  };
}

/** Greeting + flags + (optionally) STRUCTURED_REPLY + GO for `exportName`; returns the export size. */
export async function handshake(client: RawClient, exportName = '', structured = false): Promise<number> {
  await client.read(18);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0);
  client.send(flags);
  if (structured) {
    client.send(option(NBD_OPT_STRUCTURED_REPLY));
    await readOptionReply(client);
  }
  client.send(option(NBD_OPT_GO, infoRequestData(exportName, [NBD_INFO_BLOCK_SIZE])));
  let sizeBytes = -1;
  for (;;) {
    const reply = await readOptionReply(client);
    if (reply.type === 3 && reply.data.readUInt16BE(0) === 0)
      sizeBytes = Number(reply.data.readBigUInt64BE(2));
    if (reply.type === 1) return sizeBytes;
    if (reply.type >= 2 ** 31) throw new Error(`GO failed with ${reply.type}`);
  }
}

export function request(
  type: number,
  offsetBytes: number,
  lengthBytes: number,
  cookie: bigint,
  flags = 0,
): Buffer {
  return encodeRequest({ type, flags, cookie, offsetBytes, lengthBytes });
}

/** Reads a simple reply header: [error, cookie]. */
export async function readSimpleReply(client: RawClient): Promise<{ error: number; cookie: bigint }> {
  const reply = await client.read(16);
  if (reply.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: ${reply.toString('hex')}`);
  return { error: reply.readUInt32BE(4), cookie: reply.readBigUInt64BE(8) };
}
