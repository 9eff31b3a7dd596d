// Fixed-newstyle negotiation (proto.md "Fixed newstyle negotiation", "Option types", "Metadata
// querying"): greeting, client flags, then options until EXPORT_NAME or GO picks an export. Unknown
// options get NBD_REP_ERR_UNSUP and haggling continues; STARTTLS upgrades the stream in place.
// Works on any Duplex, so unit tests can drive it with scripted bytes.

import type { Duplex } from 'node:stream';
import {
  CONTEXT_ALLOCATION_DEPTH,
  CONTEXT_BASE_ALLOCATION,
  type ContextName,
  KNOWN_CONTEXTS,
  MAX_PAYLOAD_BYTES,
  type NbdBackend,
} from './backend.ts';
import { ByteReader } from './byte-reader.ts';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeMetaContextReplyData,
  encodeOptionReply,
  encodeServerReplyData,
  MAX_STRING_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  WireFormatError,
} from './wire.ts';

/** Option data larger than this is skipped and refused with NBD_REP_ERR_TOO_BIG. */
export const MAX_OPTION_BYTES = 64 * 1024;

export interface HandshakeConfig {
  /** Exports by name (the same backend objects for every connection). */
  exports: ReadonlyMap<string, NbdBackend>;
  /** TLS: `upgrade` wraps the plain stream after STARTTLS; `required` refuses everything else first. */
  tls?: { upgrade(socket: Duplex): Promise<Duplex>; required: boolean };
  /** True once the server is shutting down: options are refused with NBD_REP_ERR_SHUTDOWN. */
  isShuttingDown?: () => boolean;
}

/** What the handshake agreed on: everything the transmission phase needs. */
export interface NegotiatedSession {
  /** The stream to continue on (a TLS socket after STARTTLS). */
  socket: Duplex;
  /** Bytes already received after the final option (the first requests, if the client pipelined). */
  leftover: Buffer;
  backend: NbdBackend;
  exportName: string;
  structuredReplies: boolean;
  /** Selected metadata contexts by the id the server gave them. */
  contexts: Map<number, ContextName>;
  isTls: boolean;
}

/** The client broke a MUST of the handshake (or sent EXPORT_NAME for an export we can't give). */
export class HandshakeAbortedError extends Error {
  override readonly name = 'HandshakeAbortedError';
}

const CONTEXT_IDS: Record<ContextName, number> = {
  [CONTEXT_BASE_ALLOCATION]: 1,
  [CONTEXT_ALLOCATION_DEPTH]: 2,
};

/** Contexts a LIST/SET query names: exact names, or (LIST only) a namespace prefix like `base:`. */
function matchContexts(queries: readonly string[], isList: boolean): ContextName[] {
  if (queries.length === 0) return isList ? [...KNOWN_CONTEXTS] : [];
  const found = new Set<ContextName>();
  for (const query of queries) {
    for (const name of KNOWN_CONTEXTS) {
      if (query === name) found.add(name);
      else if (isList && query.endsWith(':') && name.startsWith(query)) found.add(name);
    }
  }
  return [...found];
}

/**
 * Runs the server side of the handshake. Resolves with the session, or undefined when the client
 * aborted (NBD_OPT_ABORT) or left; throws HandshakeAbortedError on a violation needing a hard disconnect.
 */
export async function negotiate(
  initialSocket: Duplex,
  config: HandshakeConfig,
): Promise<NegotiatedSession | undefined> {
  let socket = initialSocket;
  let reader = new ByteReader(socket);
  let isTls = false;
  const send = (buffer: Buffer): void => {
    socket.write(buffer);
  };
  try {
    send(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      throw new HandshakeAbortedError(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    let structuredReplies = false;
    let contexts = new Map<number, ContextName>();
    let contextsExport = '';

    for (;;) {
      const header = decodeOptionHeader(await reader.read(OPTION_HEADER_BYTES));
      if (header.magic !== NBD_IHAVEOPT) throw new HandshakeAbortedError('bad option magic');
      const { option } = header;
      const reply = (type: number, data?: Buffer): void => send(encodeOptionReply(option, type, data));
      const replyError = (type: number, message: string): void => reply(type, Buffer.from(message, 'utf8'));

      if (header.lengthBytes > MAX_OPTION_BYTES) {
        if (option === NBD_OPT_EXPORT_NAME) throw new HandshakeAbortedError('export name too long');
        await reader.skip(header.lengthBytes);
        replyError(NBD_REP_ERR_TOO_BIG, 'option data too large');
        continue;
      }
      const data = await reader.read(header.lengthBytes);

      if (config.isShuttingDown?.() && option !== NBD_OPT_ABORT) {
        if (option === NBD_OPT_EXPORT_NAME) throw new HandshakeAbortedError('server shutting down');
        replyError(NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
        continue;
      }
      if (config.tls?.required && !isTls && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
        if (option === NBD_OPT_EXPORT_NAME) throw new HandshakeAbortedError('TLS required');
        replyError(NBD_REP_ERR_TLS_REQD, 'TLS is required on this server');
        continue;
      }

      switch (option) {
        case NBD_OPT_EXPORT_NAME: {
          const name = data.length <= MAX_STRING_BYTES ? data.toString('utf8') : undefined;
          const backend = name === undefined ? undefined : config.exports.get(name);
          if (name === undefined || !backend) throw new HandshakeAbortedError('unknown export');
          send(
            encodeExportNameReply(backend.sizeBytes, backend.transmissionFlags(structuredReplies), noZeroes),
          );
          if (contextsExport !== name) contexts = new Map();
          return {
            socket,
            leftover: reader.release(),
            backend,
            exportName: name,
            structuredReplies,
            contexts,
            isTls,
          };
        }
        case NBD_OPT_ABORT:
          reply(NBD_REP_ACK);
          reader.release();
          socket.end();
          return undefined;
        case NBD_OPT_LIST:
          if (data.length !== 0) {
            replyError(NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
            break;
          }
          for (const [name, backend] of config.exports) {
            reply(NBD_REP_SERVER, encodeServerReplyData(name, backend.export.description ?? ''));
          }
          reply(NBD_REP_ACK);
          break;
        case NBD_OPT_STARTTLS: {
          if (data.length !== 0) replyError(NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
          else if (!config.tls) replyError(NBD_REP_ERR_UNSUP, 'TLS is not configured on this server');
          else if (isTls) replyError(NBD_REP_ERR_INVALID, 'TLS is already active');
          else {
            reply(NBD_REP_ACK);
            const leftover = reader.release();
            // The client may not send until the TLS handshake; any early bytes are its ClientHello.
            if (leftover.length > 0) socket.unshift(leftover);
            socket = await config.tls.upgrade(socket);
            reader = new ByteReader(socket);
            isTls = true;
            // Options negotiated before TLS don't carry over (proto.md "TLS support").
            structuredReplies = false;
            contexts = new Map();
          }
          break;
        }
        case NBD_OPT_INFO:
        case NBD_OPT_GO: {
          let request: ReturnType<typeof decodeInfoRequest>;
          try {
            request = decodeInfoRequest(data);
          } catch (err) {
            if (!(err instanceof WireFormatError)) throw err;
            replyError(NBD_REP_ERR_INVALID, err.message);
            break;
          }
          const backend = config.exports.get(request.exportName);
          if (!backend) {
            replyError(NBD_REP_ERR_UNKNOWN, `export '${request.exportName}' not found`);
            break;
          }
          reply(
            NBD_REP_INFO,
            encodeInfoExport(backend.sizeBytes, backend.transmissionFlags(structuredReplies)),
          );
          if (request.infoTypes.includes(NBD_INFO_NAME))
            reply(NBD_REP_INFO, encodeInfoText(NBD_INFO_NAME, request.exportName));
          const description = backend.export.description;
          if (request.infoTypes.includes(NBD_INFO_DESCRIPTION) && description) {
            reply(NBD_REP_INFO, encodeInfoText(NBD_INFO_DESCRIPTION, description));
          }
          // Minimum 1: the engine handles any byte range, so clients need not align (proto.md "Block size constraints").
          reply(NBD_REP_INFO, encodeInfoBlockSize(1, backend.preferredBlockSizeBytes(), MAX_PAYLOAD_BYTES));
          reply(NBD_REP_ACK);
          if (option === NBD_OPT_GO) {
            if (contextsExport !== request.exportName) contexts = new Map();
            return {
              socket,
              leftover: reader.release(),
              backend,
              exportName: request.exportName,
              structuredReplies,
              contexts,
              isTls,
            };
          }
          break;
        }
        case NBD_OPT_STRUCTURED_REPLY:
          if (data.length !== 0) replyError(NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          else if (structuredReplies)
            replyError(NBD_REP_ERR_INVALID, 'structured replies already negotiated');
          else {
            structuredReplies = true;
            reply(NBD_REP_ACK);
          }
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT: {
          const isList = option === NBD_OPT_LIST_META_CONTEXT;
          // Listing is harmless; selecting needs structured replies first (qemu-nbd draws the same line).
          if (!isList && !structuredReplies) {
            replyError(NBD_REP_ERR_INVALID, 'metadata contexts need structured replies first');
            break;
          }
          let request: ReturnType<typeof decodeMetaContextRequest>;
          try {
            request = decodeMetaContextRequest(data);
          } catch (err) {
            if (!(err instanceof WireFormatError)) throw err;
            replyError(NBD_REP_ERR_INVALID, err.message);
            break;
          }
          if (!config.exports.has(request.exportName)) {
            replyError(NBD_REP_ERR_UNKNOWN, `export '${request.exportName}' not found`);
            break;
          }
          const matched = matchContexts(request.queries, isList);
          if (!isList) {
            contexts = new Map(matched.map((name) => [CONTEXT_IDS[name], name]));
            contextsExport = request.exportName;
          }
          for (const name of matched) {
            reply(NBD_REP_META_CONTEXT, encodeMetaContextReplyData(isList ? 0 : CONTEXT_IDS[name], name));
          }
          reply(NBD_REP_ACK);
          break;
        }
        default:
          replyError(NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
      }
    }
  } catch (err) {
    reader.release();
    throw err;
  }
}
