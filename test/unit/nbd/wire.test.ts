// Wire structs round-trip, and the option-data decoders reject any malformed input with
// WireFormatError only (never a RangeError or an allocation sized by a length field). Issue 5.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeExportNameReply,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionReply,
  encodeRequest,
  encodeStructuredError,
  NBD_IHAVEOPT,
  NBD_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REQUEST_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  WireFormatError,
} from '../../../src/nbd/wire.ts';
import { infoRequestData, metaContextRequestData } from './raw-client.ts';

describe('NBD wire format', () => {
  it('encodes the greeting and option replies with their magics', () => {
    const greeting = encodeGreeting(3);
    expect(greeting.readBigUInt64BE(0)).toBe(NBD_MAGIC);
    expect(greeting.readBigUInt64BE(8)).toBe(NBD_IHAVEOPT);
    expect(greeting.readUInt16BE(16)).toBe(3);
    const reply = encodeOptionReply(7, 2 ** 31 + 1, Buffer.from('no'));
    expect(reply.readBigUInt64BE(0)).toBe(NBD_OPTION_REPLY_MAGIC);
    expect([reply.readUInt32BE(8), reply.readUInt32BE(12), reply.readUInt32BE(16)]).toEqual([
      7,
      2 ** 31 + 1,
      2,
    ]);
    expect(encodeExportNameReply(4096, 1, true).length).toBe(10);
    expect(encodeExportNameReply(4096, 1, false).length).toBe(134);
  });

  it('round-trips requests, flagging offsets beyond 2^53', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.integer({ min: 0, max: 0xffff }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        (flags, type, cookie, offsetBytes, lengthBytes) => {
          const decoded = decodeRequest(encodeRequest({ flags, type, cookie, offsetBytes, lengthBytes }));
          expect(decoded).toEqual({
            magic: NBD_REQUEST_MAGIC,
            flags,
            type,
            cookie,
            offsetBytes,
            lengthBytes,
            offsetOverflow: false,
          });
        },
      ),
    );
    const huge = encodeRequest({ flags: 0, type: 0, cookie: 1n, offsetBytes: 0, lengthBytes: 1 });
    huge.writeBigUInt64BE(2n ** 63n, 16);
    expect(decodeRequest(huge).offsetOverflow).toBe(true);
    // The edge: 2^53 - 1 is the largest offset a number holds exactly, 2^53 the first that overflows.
    huge.writeBigUInt64BE(2n ** 53n - 1n, 16);
    expect(decodeRequest(huge)).toMatchObject({ offsetOverflow: false, offsetBytes: 2 ** 53 - 1 });
    huge.writeBigUInt64BE(2n ** 53n, 16);
    expect(decodeRequest(huge).offsetOverflow).toBe(true);
  });

  it('round-trips INFO/GO and META_CONTEXT option data', () => {
    expect(decodeInfoRequest(infoRequestData('disk', [0, 1, 3]))).toEqual({
      exportName: 'disk',
      infoTypes: [0, 1, 3],
    });
    expect(decodeMetaContextRequest(metaContextRequestData('', ['base:allocation', 'qemu:']))).toEqual({
      exportName: '',
      queries: ['base:allocation', 'qemu:'],
    });
    expect(
      decodeOptionHeader(Buffer.concat([Buffer.from('IHAVEOPT'), Buffer.from([0, 0, 0, 7, 0, 0, 0, 9])])),
    ).toEqual({ magic: NBD_IHAVEOPT, option: 7, lengthBytes: 9 });
  });

  it('rejects malformed option data with WireFormatError only', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        for (const decode of [decodeInfoRequest, decodeMetaContextRequest]) {
          try {
            decode(Buffer.from(bytes));
          } catch (err) {
            expect(err).toBeInstanceOf(WireFormatError);
          }
        }
      }),
      { numRuns: 2000 },
    );
    const lying = metaContextRequestData('', []);
    lying.writeUInt32BE(0xffffffff, 4);
    expect(() => decodeMetaContextRequest(lying)).toThrow(WireFormatError);
  });

  it('lays out structured reply chunks as the spec draws them', () => {
    const hole = encodeOffsetHole(1, 9n, 4096, 512);
    expect([hole.readUInt32BE(0), hole.readUInt16BE(4), hole.readUInt16BE(6), hole.readUInt32BE(16)]).toEqual(
      [NBD_STRUCTURED_REPLY_MAGIC, 1, 2, 12],
    );
    expect([Number(hole.readBigUInt64BE(20)), hole.readUInt32BE(28)]).toEqual([4096, 512]);
    // OFFSET_DATA's offset is written as two 32-bit halves: check both across the 2^32 boundary.
    for (const offsetBytes of [0, 2 ** 32 - 512, 2 ** 32, 2 ** 40 + 4096, 2 ** 53 - 1]) {
      const data = encodeOffsetDataHeader(1, 9n, offsetBytes, 512);
      expect([data.readUInt16BE(6), data.readUInt32BE(16), data.readBigUInt64BE(20)]).toEqual([
        1,
        8 + 512,
        BigInt(offsetBytes),
      ]);
    }
    const status = encodeBlockStatus(1, 9n, 2, [{ lengthBytes: 512, statusFlags: 3 }]);
    expect([
      status.readUInt16BE(6),
      status.readUInt32BE(16),
      status.readUInt32BE(20),
      status.readUInt32BE(24),
      status.readUInt32BE(28),
    ]).toEqual([NBD_REPLY_TYPE_BLOCK_STATUS, 12, 2, 512, 3]);
    const error = encodeStructuredError(1, 9n, 22, 'bad');
    expect([
      error.readUInt16BE(6),
      error.readUInt32BE(16),
      error.readUInt32BE(20),
      error.readUInt16BE(24),
      error.toString('utf8', 26),
    ]).toEqual([NBD_REPLY_TYPE_ERROR, 9, 22, 3, 'bad']);
  });
});
