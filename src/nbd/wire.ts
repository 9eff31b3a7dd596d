// NBD wire format: magics, option / reply / command / flag codes and encode/decode of every struct.
// Pure Buffer functions, no I/O. Spec: the NBD protocol document (nbd/doc/proto.md), sections
// "Handshake" (fixed newstyle), "Option types", "Transmission", "Structured reply chunk message".

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle greeting magic and the prefix of every client option. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bits) and client flags (32 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Option types.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// Option reply types; errors have bit 31 set.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const REP_ERR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = REP_ERR + 1;
export const NBD_REP_ERR_POLICY = REP_ERR + 2;
export const NBD_REP_ERR_INVALID = REP_ERR + 3;
export const NBD_REP_ERR_PLATFORM = REP_ERR + 4;
export const NBD_REP_ERR_TLS_REQD = REP_ERR + 5;
export const NBD_REP_ERR_UNKNOWN = REP_ERR + 6;
export const NBD_REP_ERR_SHUTDOWN = REP_ERR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8;
export const NBD_REP_ERR_TOO_BIG = REP_ERR + 9;

// NBD_REP_INFO item types.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bits, per export).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// Command flags.
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// base:allocation status bits.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// Error values (errno numbers as the protocol fixes them, independent of the host).
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Bytes of the server's greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export const GREETING_BYTES = 18;
/** Bytes of a client option header: IHAVEOPT, 32-bit option, 32-bit length. */
export const OPTION_HEADER_BYTES = 16;
/** Bytes of a transmission request header. */
export const REQUEST_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;

/** Encodes the server greeting. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const out = Buffer.allocUnsafe(GREETING_BYTES);
  out.writeBigUInt64BE(NBD_MAGIC, 0);
  out.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  out.writeUInt16BE(handshakeFlags, 16);
  return out;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  lengthBytes: number;
}

/** Decodes a client option header (16 bytes); the caller checks `magic`. */
export function decodeOptionHeader(bytes: Uint8Array): OptionHeader {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { magic: view.readBigUInt64BE(0), option: view.readUInt32BE(8), lengthBytes: view.readUInt32BE(12) };
}

/** Encodes one option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(
  option: number,
  replyType: number,
  data: Uint8Array = Buffer.alloc(0),
): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(replyType, 12);
  out.writeUInt32BE(data.length, 16);
  out.set(data, 20);
  return out;
}

/** NBD_OPT_EXPORT_NAME's reply: size, transmission flags, then 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  out.writeBigUInt64BE(BigInt(sizeBytes), 0);
  out.writeUInt16BE(transmissionFlags, 8);
  return out;
}

/** UTF-8 bytes of a protocol string, cut to the spec's 4096-byte limit ("Conventions"). */
function protocolString(text: string): Buffer {
  return Buffer.from(text, 'utf8').subarray(0, 4096);
}

/** NBD_REP_SERVER data for NBD_OPT_LIST: 32-bit name length, name, description. */
export function encodeServerReplyData(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = protocolString(description);
  const out = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  descriptionBytes.copy(out, 4 + nameBytes.length);
  return out;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  out.writeUInt16BE(NBD_INFO_EXPORT, 0);
  out.writeBigUInt64BE(BigInt(sizeBytes), 2);
  out.writeUInt16BE(transmissionFlags, 10);
  return out;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: 16-bit type then UTF-8 text (no length, the reply has it). */
export function encodeInfoText(infoType: number, text: string): Buffer {
  const textBytes = protocolString(text);
  const out = Buffer.allocUnsafe(2 + textBytes.length);
  out.writeUInt16BE(infoType, 0);
  textBytes.copy(out, 2);
  return out;
}

export function encodeInfoBlockSize(
  minimumBytes: number,
  preferredBytes: number,
  maximumBytes: number,
): Buffer {
  const out = Buffer.allocUnsafe(14);
  out.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  out.writeUInt32BE(minimumBytes, 2);
  out.writeUInt32BE(preferredBytes, 6);
  out.writeUInt32BE(maximumBytes, 10);
  return out;
}

/** NBD_REP_META_CONTEXT data: 32-bit context id, then the context name. */
export function encodeMetaContextReplyData(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length);
  out.writeUInt32BE(contextId, 0);
  nameBytes.copy(out, 4);
  return out;
}

/** Raised by the option-data decoders when lengths inside the data don't add up (NBD_REP_ERR_INVALID). */
export class WireFormatError extends Error {
  override readonly name = 'WireFormatError';
}

/** Maximum export name / query string length the spec requires servers to accept, and our cap. */
export const MAX_STRING_BYTES = 4096;

function readString(data: Buffer, offsetBytes: number, lengthBytes: number, what: string): string {
  if (lengthBytes > MAX_STRING_BYTES)
    throw new WireFormatError(`${what} longer than ${MAX_STRING_BYTES} bytes`);
  if (offsetBytes + lengthBytes > data.length) throw new WireFormatError(`${what} runs past the option data`);
  return data.toString('utf8', offsetBytes, offsetBytes + lengthBytes);
}

export interface InfoRequest {
  exportName: string;
  /** NBD_INFO_* types the client asked for. */
  infoTypes: number[];
}

/** Decodes NBD_OPT_INFO / NBD_OPT_GO data: 32-bit name length, name, 16-bit count, 16-bit info types. */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw new WireFormatError('INFO/GO data shorter than 6 bytes');
  const nameLength = data.readUInt32BE(0);
  const exportName = readString(data, 4, nameLength, 'export name');
  let cursor = 4 + nameLength;
  if (cursor + 2 > data.length) throw new WireFormatError('INFO/GO data lacks the request count');
  const count = data.readUInt16BE(cursor);
  cursor += 2;
  if (cursor + count * 2 !== data.length)
    throw new WireFormatError('INFO/GO request count does not match the data length');
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index++) infoTypes.push(data.readUInt16BE(cursor + index * 2));
  return { exportName, infoTypes };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Decodes LIST/SET_META_CONTEXT data: 32-bit name length, name, 32-bit query count, (32-bit length, query)*. */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) throw new WireFormatError('META_CONTEXT data shorter than 8 bytes');
  const nameLength = data.readUInt32BE(0);
  const exportName = readString(data, 4, nameLength, 'export name');
  let cursor = 4 + nameLength;
  if (cursor + 4 > data.length) throw new WireFormatError('META_CONTEXT data lacks the query count');
  const count = data.readUInt32BE(cursor);
  cursor += 4;
  // Each query takes at least 4 bytes, which bounds the loop by the (already bounded) data length.
  if (count * 4 > data.length - cursor)
    throw new WireFormatError('META_CONTEXT query count exceeds the data');
  const queries: string[] = [];
  for (let index = 0; index < count; index++) {
    if (cursor + 4 > data.length) throw new WireFormatError('META_CONTEXT query runs past the data');
    const queryLength = data.readUInt32BE(cursor);
    queries.push(readString(data, cursor + 4, queryLength, 'meta context query'));
    cursor += 4 + queryLength;
  }
  if (cursor !== data.length) throw new WireFormatError('META_CONTEXT data has trailing bytes');
  return { exportName, queries };
}

export interface Request {
  magic: number;
  flags: number;
  type: number;
  /** The client's opaque 64-bit handle ("cookie"), echoed verbatim in replies. */
  cookie: bigint;
  offsetBytes: number;
  lengthBytes: number;
  /** The 64-bit offset did not fit a safe JS number (always past the end of any export). */
  offsetOverflow: boolean;
}

/** Decodes a 28-byte request header starting at `at`. */
export function decodeRequest(bytes: Buffer, at = 0): Request {
  // The offset as two 32-bit halves, not a BigInt: this runs for every request. A high half above
  // 2^21 - 1 puts it past Number.MAX_SAFE_INTEGER (2^53 - 1).
  const offsetHigh = bytes.readUInt32BE(at + 16);
  const offsetOverflow = offsetHigh > 0x1fffff;
  return {
    magic: bytes.readUInt32BE(at),
    flags: bytes.readUInt16BE(at + 4),
    type: bytes.readUInt16BE(at + 6),
    cookie: bytes.readBigUInt64BE(at + 8),
    offsetBytes: offsetOverflow
      ? Number.MAX_SAFE_INTEGER
      : offsetHigh * 0x1_0000_0000 + bytes.readUInt32BE(at + 20),
    lengthBytes: bytes.readUInt32BE(at + 24),
    offsetOverflow,
  };
}

/** Encodes a request header (used by tests and any client code). */
export function encodeRequest(
  request: Omit<Request, 'offsetOverflow' | 'magic'> & { magic?: number },
): Buffer {
  const out = Buffer.allocUnsafe(REQUEST_BYTES);
  out.writeUInt32BE(request.magic ?? NBD_REQUEST_MAGIC, 0);
  out.writeUInt16BE(request.flags, 4);
  out.writeUInt16BE(request.type, 6);
  out.writeBigUInt64BE(request.cookie, 8);
  out.writeBigUInt64BE(BigInt(request.offsetBytes), 16);
  out.writeUInt32BE(request.lengthBytes, 24);
  return out;
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  out.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(error, 4);
  out.writeBigUInt64BE(cookie, 8);
  return out;
}

/** A structured reply chunk header; `extraBytes` of header-owned payload follow it in the same buffer. */
export function encodeStructuredHeader(
  flags: number,
  type: number,
  cookie: bigint,
  payloadLengthBytes: number,
  extraBytes = 0,
): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + extraBytes);
  out.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.writeBigUInt64BE(cookie, 8);
  out.writeUInt32BE(payloadLengthBytes, 16);
  return out;
}

/** OFFSET_DATA chunk header plus its 8-byte offset; the data bytes follow separately (no copy). */
export function encodeOffsetDataHeader(
  flags: number,
  cookie: bigint,
  offsetBytes: number,
  dataBytes: number,
): Buffer {
  const out = encodeStructuredHeader(flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataBytes, 8);
  // Two 32-bit halves rather than a BigInt (every READ reply has one); offsets are safe integers.
  out.writeUInt32BE(Math.floor(offsetBytes / 0x1_0000_0000), STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt32BE(offsetBytes % 0x1_0000_0000, STRUCTURED_REPLY_HEADER_BYTES + 4);
  return out;
}

export function encodeOffsetHole(
  flags: number,
  cookie: bigint,
  offsetBytes: number,
  holeBytes: number,
): Buffer {
  const out = encodeStructuredHeader(flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12, 12);
  out.writeUInt32BE(Math.floor(offsetBytes / 0x1_0000_0000), STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt32BE(offsetBytes % 0x1_0000_0000, STRUCTURED_REPLY_HEADER_BYTES + 4);
  out.writeUInt32BE(holeBytes, STRUCTURED_REPLY_HEADER_BYTES + 8);
  return out;
}

/** ERROR chunk: 32-bit error, 16-bit message length, message (trimmed to 4096 bytes). */
export function encodeStructuredError(flags: number, cookie: bigint, error: number, message: string): Buffer {
  const messageBytes = Buffer.from(message, 'utf8').subarray(0, MAX_STRING_BYTES);
  const out = encodeStructuredHeader(
    flags,
    NBD_REPLY_TYPE_ERROR,
    cookie,
    6 + messageBytes.length,
    6 + messageBytes.length,
  );
  out.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt16BE(messageBytes.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  messageBytes.copy(out, STRUCTURED_REPLY_HEADER_BYTES + 6);
  return out;
}

export interface BlockStatusDescriptor {
  lengthBytes: number;
  statusFlags: number;
}

/** BLOCK_STATUS chunk: 32-bit context id, then (32-bit length, 32-bit flags) per descriptor. */
export function encodeBlockStatus(
  flags: number,
  cookie: bigint,
  contextId: number,
  descriptors: readonly BlockStatusDescriptor[],
): Buffer {
  const payloadBytes = 4 + descriptors.length * 8;
  const out = encodeStructuredHeader(flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadBytes, payloadBytes);
  let cursor = STRUCTURED_REPLY_HEADER_BYTES;
  out.writeUInt32BE(contextId, cursor);
  cursor += 4;
  for (const descriptor of descriptors) {
    out.writeUInt32BE(descriptor.lengthBytes, cursor);
    out.writeUInt32BE(descriptor.statusFlags, cursor + 4);
    cursor += 8;
  }
  return out;
}
