// The option phase driven with scripted bytes over an in-memory stream pair (no sockets): the order
// rules for meta contexts, prefix queries, STARTTLS without TLS, TLS-required refusals, ABORT, and
// bytes pipelined after GO reaching the transmission phase. Issue 5.

import { type Duplex, duplexPair } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { NbdBackend } from '../../../src/nbd/backend.ts';
import { type HandshakeConfig, type NegotiatedSession, negotiate } from '../../../src/nbd/handshake.ts';
import {
  NBD_OPT_ABORT,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
} from '../../../src/nbd/wire.ts';
import { createMemoryDevice } from './memory-device.ts';
import { infoRequestData, metaContextRequestData, option } from './raw-client.ts';

interface Reply {
  option: number;
  type: number;
  data: Buffer;
}

/** Collects what the server writes and parses it as greeting + option replies. */
class ScriptedClient {
  readonly stream: Duplex;
  private received = Buffer.alloc(0);
  constructor(stream: Duplex) {
    this.stream = stream;
    stream.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
    });
  }
  async settle(): Promise<void> {
    for (let index = 0; index < 5; index++) await new Promise((resolve) => setImmediate(resolve));
  }
  /** Option replies received so far (after the 18-byte greeting). */
  replies(): Reply[] {
    const out: Reply[] = [];
    let at = 18;
    while (at + 20 <= this.received.length) {
      const lengthBytes = this.received.readUInt32BE(at + 16);
      out.push({
        option: this.received.readUInt32BE(at + 8),
        type: this.received.readUInt32BE(at + 12),
        data: this.received.subarray(at + 20, at + 20 + lengthBytes),
      });
      at += 20 + lengthBytes;
    }
    return out;
  }
}

/** GO / INFO option data for `exportName` asking for no information types. */
const goData = (exportName: string): Buffer => infoRequestData(exportName, []);

function setup(extra: Partial<HandshakeConfig> = {}): {
  client: ScriptedClient;
  result: Promise<NegotiatedSession | undefined>;
} {
  const [serverSide, clientSide] = duplexPair();
  const backend = new NbdBackend({ name: 'disk', device: createMemoryDevice(1024 * 1024).device });
  const result = negotiate(serverSide, { exports: new Map([['disk', backend]]), ...extra });
  const client = new ScriptedClient(clientSide);
  clientSide.write(Buffer.from([0, 0, 0, 3]));
  return { client, result };
}

describe('NBD handshake (scripted bytes)', () => {
  it('requires structured replies before meta contexts, lists by prefix and selects exact names', async () => {
    const { client, result } = setup();
    client.stream.write(
      option(NBD_OPT_SET_META_CONTEXT, metaContextRequestData('disk', ['base:allocation'])),
    );
    client.stream.write(option(NBD_OPT_STRUCTURED_REPLY));
    client.stream.write(option(NBD_OPT_LIST_META_CONTEXT, metaContextRequestData('disk', ['qemu:'])));
    client.stream.write(
      option(NBD_OPT_SET_META_CONTEXT, metaContextRequestData('nope', ['base:allocation'])),
    );
    client.stream.write(
      option(
        NBD_OPT_SET_META_CONTEXT,
        metaContextRequestData('disk', ['base:allocation', 'base:', 'other:x']),
      ),
    );
    client.stream.write(Buffer.concat([option(NBD_OPT_GO, goData('disk')), Buffer.from('pipelined')]));
    const session = await result;
    await client.settle();
    const replies = client
      .replies()
      .map((reply) => [
        reply.option,
        reply.type,
        reply.type === NBD_REP_META_CONTEXT ? reply.data.toString('utf8', 4) : '',
      ]);
    expect(replies).toEqual([
      [NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_INVALID, ''],
      [NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, ''],
      [NBD_OPT_LIST_META_CONTEXT, NBD_REP_META_CONTEXT, 'qemu:allocation-depth'],
      [NBD_OPT_LIST_META_CONTEXT, NBD_REP_ACK, ''],
      [NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_UNKNOWN, ''],
      [NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, 'base:allocation'],
      [NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, ''],
      [NBD_OPT_GO, NBD_REP_INFO, ''],
      [NBD_OPT_GO, NBD_REP_INFO, ''],
      [NBD_OPT_GO, NBD_REP_ACK, ''],
    ]);
    expect(session?.structuredReplies).toBe(true);
    expect([...(session?.contexts.values() ?? [])]).toEqual(['base:allocation']);
    expect(session?.leftover.toString()).toBe('pipelined');
  });

  it('refuses STARTTLS when no TLS is configured and carries on', async () => {
    const { client, result } = setup();
    client.stream.write(option(NBD_OPT_STARTTLS));
    client.stream.write(option(NBD_OPT_INFO, goData('missing')));
    client.stream.write(option(NBD_OPT_ABORT));
    expect(await result).toBeUndefined();
    await client.settle();
    expect(client.replies().map((reply) => reply.type)).toEqual([
      NBD_REP_ERR_UNSUP,
      NBD_REP_ERR_UNKNOWN,
      NBD_REP_ACK,
    ]);
  });

  it('refuses every option but STARTTLS and ABORT while TLS is required', async () => {
    const { client, result } = setup({ tls: { required: true, upgrade: async (socket) => socket } });
    client.stream.write(option(NBD_OPT_STRUCTURED_REPLY));
    client.stream.write(option(NBD_OPT_GO, goData('disk')));
    client.stream.write(option(NBD_OPT_ABORT));
    expect(await result).toBeUndefined();
    await client.settle();
    expect(client.replies().map((reply) => reply.type)).toEqual([
      NBD_REP_ERR_TLS_REQD,
      NBD_REP_ERR_TLS_REQD,
      NBD_REP_ACK,
    ]);
  });
});
