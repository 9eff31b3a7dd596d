// LZFSE decompression for ULFO chunks (type 0x80000007), written from the format as Apple's reference
// describes it (lzfse_internal.h, lzfse_fse.h): "bvx$" end, "bvx-" stored, "bvxn" LZVN, "bvx1"/"bvx2"
// FSE blocks (tANS-coded literals in four interleaved states, then L/M/D triplets read backwards).
// Output is bounded by the chunk's declared size; every table index and distance is checked.
// Tested against streams from Apple's reference encoder (test/fixtures/images/dmg/).

const MAGIC_END = 0x24787662; // "bvx$"
const MAGIC_STORED = 0x2d787662; // "bvx-"
const MAGIC_V1 = 0x31787662; // "bvx1"
const MAGIC_V2 = 0x32787662; // "bvx2"
const MAGIC_LZVN = 0x6e787662; // "bvxn"

const L_SYMBOLS = 20;
const M_SYMBOLS = 20;
const D_SYMBOLS = 64;
const LITERAL_SYMBOLS = 256;
const L_STATES = 64;
const M_STATES = 64;
const D_STATES = 256;
const LITERAL_STATES = 1024;
const MAX_MATCHES = 10000;
const MAX_LITERALS = 4 * MAX_MATCHES;
const V1_HEADER_BYTES = 772;

const L_EXTRA_BITS = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 5, 8];
const L_BASE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 28, 60];
const M_EXTRA_BITS = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 5, 8, 11];
const M_BASE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 56, 312];
const D_EXTRA_BITS = Array.from({ length: D_SYMBOLS }, (_, i) => i >> 2);
const D_BASE = (() => {
  // Distances: 0..3 exactly, then groups of four symbols per extra-bit width (1..15 bits).
  const base: number[] = [];
  let next = 0;
  for (let i = 0; i < D_SYMBOLS; i++) {
    base.push(next);
    next += 2 ** D_EXTRA_BITS[i]!;
  }
  return base;
})();

class LzfseError extends Error {}

function fail(message: string): never {
  throw new LzfseError(message);
}

/** Backward bit reader over input[startByte, endByte): fields come out last-written first. */
class BackwardBits {
  private readonly input: Uint8Array;
  private readonly startBit: number;
  private position: number;

  constructor(input: Uint8Array, startByte: number, endByte: number, initialBits: number) {
    if (initialBits > 0 || initialBits < -7) fail('LZFSE invalid initial bit count');
    this.input = input;
    this.startBit = startByte * 8;
    this.position = endByte * 8 + initialBits;
    if (this.position < this.startBit) fail('LZFSE bit stream truncated');
  }

  /** The `count` (<= 32) bits just below the current position, as a little-endian value. */
  pull(count: number): number {
    this.position -= count;
    if (this.position < this.startBit) fail('LZFSE bit stream underflow');
    let value = 0;
    for (let done = 0; done < count; ) {
      const bit = this.position + done;
      const shift = bit & 7;
      const take = Math.min(8 - shift, count - done);
      value += ((this.input[bit >> 3]! >> shift) & ((1 << take) - 1)) * 2 ** done;
      done += take;
    }
    return value;
  }
}

interface SymbolDecoder {
  bits: Int8Array;
  symbol: Uint8Array;
  delta: Int32Array;
}

interface ValueDecoder {
  totalBits: Uint8Array;
  valueBits: Uint8Array;
  delta: Int32Array;
  base: Int32Array;
}

function entryShape(frequency: number, stateCount: number): { bits: number; firstLong: number } {
  const bits = Math.clz32(frequency) - Math.clz32(stateCount);
  return { bits, firstLong: ((2 * stateCount) >> bits) - frequency };
}

/**
 * Walks the states of an FSE decoding table built from (checked) `frequencies`: each symbol owns
 * `frequency` consecutive states; `visit` gets a state, its symbol, the state bits it reads and its delta.
 */
function forEachState(
  frequencies: ArrayLike<number>,
  stateCount: number,
  visit: (state: number, symbol: number, bits: number, delta: number) => void,
): void {
  let state = 0;
  for (let symbol = 0; symbol < frequencies.length; symbol++) {
    const frequency = frequencies[symbol]!;
    if (frequency === 0) continue;
    const { bits, firstLong } = entryShape(frequency, stateCount);
    for (let j = 0; j < frequency; j++, state++) {
      if (j < firstLong) visit(state, symbol, bits, ((frequency + j) << bits) - stateCount);
      else visit(state, symbol, bits - 1, (j - firstLong) << (bits - 1));
    }
  }
}

function checkFrequencies(frequencies: ArrayLike<number>, stateCount: number): void {
  let sum = 0;
  for (let i = 0; i < frequencies.length; i++) sum += frequencies[i]!;
  if (sum > stateCount) fail('LZFSE frequency table exceeds its state count');
}

function symbolDecoder(frequencies: ArrayLike<number>, stateCount: number): SymbolDecoder {
  checkFrequencies(frequencies, stateCount);
  const decoder: SymbolDecoder = {
    bits: new Int8Array(stateCount).fill(-1),
    symbol: new Uint8Array(stateCount),
    delta: new Int32Array(stateCount),
  };
  forEachState(frequencies, stateCount, (state, symbol, bits, delta) => {
    decoder.symbol[state] = symbol;
    decoder.bits[state] = bits;
    decoder.delta[state] = delta;
  });
  return decoder;
}

function valueDecoder(
  frequencies: ArrayLike<number>,
  stateCount: number,
  extraBits: number[],
  base: number[],
): ValueDecoder {
  checkFrequencies(frequencies, stateCount);
  const decoder: ValueDecoder = {
    totalBits: new Uint8Array(stateCount).fill(255),
    valueBits: new Uint8Array(stateCount),
    delta: new Int32Array(stateCount),
    base: new Int32Array(stateCount),
  };
  forEachState(frequencies, stateCount, (state, symbol, bits, delta) => {
    decoder.valueBits[state] = extraBits[symbol]!;
    decoder.base[state] = base[symbol]!;
    decoder.totalBits[state] = bits + extraBits[symbol]!;
    decoder.delta[state] = delta;
  });
  return decoder;
}

interface BlockHeader {
  rawBytes: number;
  headerBytes: number;
  literalCount: number;
  literalPayloadBytes: number;
  matchCount: number;
  literalBits: number;
  literalStates: number[];
  lmdPayloadBytes: number;
  lmdBits: number;
  lState: number;
  mState: number;
  dState: number;
  /** l, m, d, literal frequencies, concatenated (360 values). */
  frequencies: Uint16Array;
}

/** Decodes a v2 frequency value from the low bits of `bits` (a fixed prefix code); returns [value, width]. */
function frequencyValue(bits: number): [number, number] {
  const NBITS = [
    2, 3, 2, 5, 2, 3, 2, 8, 2, 3, 2, 5, 2, 3, 2, 14, 2, 3, 2, 5, 2, 3, 2, 8, 2, 3, 2, 5, 2, 3, 2, 14,
  ];
  const VALUES = [
    0, 2, 1, 4, 0, 3, 1, -1, 0, 2, 1, 5, 0, 3, 1, -1, 0, 2, 1, 6, 0, 3, 1, -1, 0, 2, 1, 7, 0, 3, 1, -1,
  ];
  const low = bits & 31;
  const width = NBITS[low]!;
  if (width === 8) return [8 + ((bits >>> 4) & 0xf), 8];
  if (width === 14) return [24 + ((bits >>> 4) & 0x3ff), 14];
  return [VALUES[low]!, width];
}

function field(value: bigint, lsb: number, width: number): number {
  return Number((value >> BigInt(lsb)) & ((1n << BigInt(width)) - 1n));
}

function readV2Header(input: Uint8Array, at: number): BlockHeader {
  if (at + 32 > input.length) fail('LZFSE v2 header truncated');
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const v0 = view.getBigUint64(at + 8, true);
  const v1 = view.getBigUint64(at + 16, true);
  const v2 = view.getBigUint64(at + 24, true);
  const headerBytes = field(v2, 0, 32);
  if (headerBytes < 32 || at + headerBytes > input.length) fail('LZFSE v2 header size out of range');
  const frequencies = new Uint16Array(L_SYMBOLS + M_SYMBOLS + D_SYMBOLS + LITERAL_SYMBOLS);
  let source = at + 32;
  const end = at + headerBytes;
  if (source < end) {
    let accumulator = 0;
    let accumulatorBits = 0;
    for (let i = 0; i < frequencies.length; i++) {
      while (source < end && accumulatorBits + 8 <= 32) {
        accumulator = (accumulator | (input[source]! << accumulatorBits)) >>> 0;
        accumulatorBits += 8;
        source++;
      }
      const [value, width] = frequencyValue(accumulator);
      if (width > accumulatorBits) fail('LZFSE frequency table truncated');
      frequencies[i] = value;
      accumulator >>>= width;
      accumulatorBits -= width;
    }
    if (accumulatorBits >= 8 || source !== end) fail('LZFSE frequency table does not end with its header');
  }
  return {
    rawBytes: view.getUint32(at + 4, true),
    headerBytes,
    literalCount: field(v0, 0, 20),
    literalPayloadBytes: field(v0, 20, 20),
    matchCount: field(v0, 40, 20),
    literalBits: field(v0, 60, 3) - 7,
    literalStates: [field(v1, 0, 10), field(v1, 10, 10), field(v1, 20, 10), field(v1, 30, 10)],
    lmdPayloadBytes: field(v1, 40, 20),
    lmdBits: field(v1, 60, 3) - 7,
    lState: field(v2, 32, 10),
    mState: field(v2, 42, 10),
    dState: field(v2, 52, 10),
    frequencies,
  };
}

function readV1Header(input: Uint8Array, at: number): BlockHeader {
  if (at + V1_HEADER_BYTES > input.length) fail('LZFSE v1 header truncated');
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const u32 = (offset: number): number => view.getUint32(at + offset, true);
  const u16 = (offset: number): number => view.getUint16(at + offset, true);
  const frequencies = new Uint16Array(L_SYMBOLS + M_SYMBOLS + D_SYMBOLS + LITERAL_SYMBOLS);
  for (let i = 0; i < frequencies.length; i++) frequencies[i] = u16(50 + 2 * i);
  return {
    rawBytes: u32(4),
    headerBytes: V1_HEADER_BYTES,
    literalCount: u32(12),
    matchCount: u32(16),
    literalPayloadBytes: u32(20),
    lmdPayloadBytes: u32(24),
    literalBits: view.getInt32(at + 28, true),
    literalStates: [u16(32), u16(34), u16(36), u16(38)],
    lmdBits: view.getInt32(at + 40, true),
    lState: u16(44),
    mState: u16(46),
    dState: u16(48),
    frequencies,
  };
}

/** Decodes one FSE block at `at` into out[outAt..]; returns [next input offset, new outAt]. */
function decodeFseBlock(
  input: Uint8Array,
  header: BlockHeader,
  at: number,
  out: Uint8Array,
  outAt: number,
): [number, number] {
  if (header.literalCount > MAX_LITERALS || header.matchCount > MAX_MATCHES || header.literalCount % 4 !== 0)
    fail('LZFSE block counts out of range');
  if (
    header.literalStates.some((state) => state >= LITERAL_STATES) ||
    header.lState >= L_STATES ||
    header.mState >= M_STATES ||
    header.dState >= D_STATES
  ) {
    fail('LZFSE initial state out of range');
  }
  const literalsStart = at + header.headerBytes;
  const literalsEnd = literalsStart + header.literalPayloadBytes;
  const lmdEnd = literalsEnd + header.lmdPayloadBytes;
  if (lmdEnd > input.length) fail('LZFSE block payload truncated');
  const f = header.frequencies;
  const lDecoder = valueDecoder(f.subarray(0, 20), L_STATES, L_EXTRA_BITS, L_BASE);
  const mDecoder = valueDecoder(f.subarray(20, 40), M_STATES, M_EXTRA_BITS, M_BASE);
  const dDecoder = valueDecoder(f.subarray(40, 104), D_STATES, D_EXTRA_BITS, D_BASE);
  const literalDecoder = symbolDecoder(f.subarray(104, 360), LITERAL_STATES);

  const literals = new Uint8Array(header.literalCount);
  const literalBits = new BackwardBits(input, literalsStart, literalsEnd, header.literalBits);
  const states = [...header.literalStates];
  for (let i = 0; i < header.literalCount; i++) {
    const lane = i & 3;
    const state = states[lane]!;
    const bits = literalDecoder.bits[state]!;
    if (bits < 0) fail('LZFSE literal state has no symbol');
    literals[i] = literalDecoder.symbol[state]!;
    states[lane] = literalDecoder.delta[state]! + literalBits.pull(bits);
    if (states[lane]! >= LITERAL_STATES) fail('LZFSE literal state out of range');
  }

  const lmd = new BackwardBits(input, literalsEnd, lmdEnd, header.lmdBits);
  const value = (decoder: ValueDecoder, state: number, stateCount: number): [number, number] => {
    const total = decoder.totalBits[state]!;
    if (total === 255) fail('LZFSE L/M/D state has no symbol');
    const bits = lmd.pull(total);
    const extra = decoder.valueBits[state]!;
    const next = decoder.delta[state]! + Math.floor(bits / 2 ** extra);
    if (next < 0 || next >= stateCount) fail('LZFSE L/M/D state out of range');
    return [decoder.base[state]! + (bits % 2 ** extra), next];
  };
  let lState = header.lState;
  let mState = header.mState;
  let dState = header.dState;
  let distance = -1;
  let literalAt = 0;
  for (let match = 0; match < header.matchCount; match++) {
    let literalLength: number;
    let matchLength: number;
    let newDistance: number;
    [literalLength, lState] = value(lDecoder, lState, L_STATES);
    [matchLength, mState] = value(mDecoder, mState, M_STATES);
    [newDistance, dState] = value(dDecoder, dState, D_STATES);
    if (newDistance !== 0) distance = newDistance;
    if (literalAt + literalLength > literals.length) fail('LZFSE literal run past the block literals');
    if (outAt + literalLength + matchLength > out.length)
      fail('LZFSE output larger than the declared chunk size');
    out.set(literals.subarray(literalAt, literalAt + literalLength), outAt);
    literalAt += literalLength;
    outAt += literalLength;
    if (matchLength > 0 && (distance <= 0 || distance > outAt)) fail('LZFSE match distance out of range');
    for (let i = 0; i < matchLength; i++, outAt++) out[outAt] = out[outAt - distance]!;
  }
  return [lmdEnd, outAt];
}

/** Decodes one LZVN payload into out[outAt .. outAt + rawBytes); returns the new outAt. */
function decodeLzvn(
  input: Uint8Array,
  start: number,
  end: number,
  out: Uint8Array,
  outAt: number,
  rawBytes: number,
): number {
  const outEnd = outAt + rawBytes;
  if (outEnd > out.length) fail('LZVN output larger than the declared chunk size');
  let at = start;
  let distance = 0;
  const byteAt = (offset: number): number => {
    if (offset >= end) fail('LZVN stream truncated');
    return input[offset]!;
  };
  const copyLiteral = (from: number, length: number): void => {
    if (from + length > end || outAt + length > outEnd) fail('LZVN literal out of range');
    out.set(input.subarray(from, from + length), outAt);
    outAt += length;
  };
  const copyMatch = (length: number): void => {
    if (distance <= 0 || distance > outAt || outAt + length > outEnd) fail('LZVN match out of range');
    for (let i = 0; i < length; i++, outAt++) out[outAt] = out[outAt - distance]!;
  };
  for (;;) {
    const opcode = byteAt(at);
    const low3 = opcode & 7;
    if (opcode === 0x06) break; // end of stream
    if (opcode === 0x0e || opcode === 0x16) {
      at += 1;
    } else if (
      (opcode >= 0x70 && opcode <= 0x7f) ||
      (opcode >= 0xd0 && opcode <= 0xdf) ||
      (opcode < 0x40 && low3 === 6)
    ) {
      fail(`LZVN undefined opcode 0x${opcode.toString(16)}`);
    } else if (opcode === 0xe0) {
      const length = byteAt(at + 1) + 16;
      copyLiteral(at + 2, length);
      at += 2 + length;
    } else if (opcode > 0xe0 && opcode <= 0xef) {
      const length = opcode & 0x0f;
      copyLiteral(at + 1, length);
      at += 1 + length;
    } else if (opcode === 0xf0) {
      copyMatch(byteAt(at + 1) + 16);
      at += 2;
    } else if (opcode > 0xf0) {
      copyMatch(opcode & 0x0f);
      at += 1;
    } else if (opcode >= 0xa0 && opcode <= 0xbf) {
      const literalLength = (opcode >> 3) & 3;
      const pair = byteAt(at + 1) | (byteAt(at + 2) << 8);
      const matchLength = (((opcode & 7) << 2) | (pair & 3)) + 3;
      distance = pair >> 2;
      copyLiteral(at + 3, literalLength);
      at += 3 + literalLength;
      copyMatch(matchLength);
    } else {
      const literalLength = opcode >> 6;
      const matchLength = ((opcode >> 3) & 7) + 3;
      let opcodeBytes: number;
      if (low3 === 7) {
        distance = byteAt(at + 1) | (byteAt(at + 2) << 8);
        opcodeBytes = 3;
      } else if (low3 === 6) {
        opcodeBytes = 1;
      } else {
        distance = (low3 << 8) | byteAt(at + 1);
        opcodeBytes = 2;
      }
      copyLiteral(at + opcodeBytes, literalLength);
      at += opcodeBytes + literalLength;
      copyMatch(matchLength);
    }
  }
  if (outAt !== outEnd) fail(`LZVN block decodes to ${outAt - (outEnd - rawBytes)} bytes, not ${rawBytes}`);
  return outAt;
}

/** Decodes an LZFSE stream into exactly `outputBytes` bytes; throws Error on malformed input. */
export function decodeLzfse(input: Uint8Array, outputBytes: number): Uint8Array {
  const out = new Uint8Array(outputBytes);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  let at = 0;
  let outAt = 0;
  for (;;) {
    if (at + 4 > input.length) fail('LZFSE stream truncated (no end-of-stream block)');
    const magic = view.getUint32(at, true);
    if (magic === MAGIC_END) break;
    if (magic === MAGIC_STORED) {
      if (at + 8 > input.length) fail('LZFSE stored block header truncated');
      const rawBytes = view.getUint32(at + 4, true);
      if (at + 8 + rawBytes > input.length) fail('LZFSE stored block truncated');
      if (outAt + rawBytes > outputBytes) fail('LZFSE output larger than the declared chunk size');
      out.set(input.subarray(at + 8, at + 8 + rawBytes), outAt);
      outAt += rawBytes;
      at += 8 + rawBytes;
    } else if (magic === MAGIC_LZVN) {
      if (at + 12 > input.length) fail('LZVN block header truncated');
      const rawBytes = view.getUint32(at + 4, true);
      const payloadBytes = view.getUint32(at + 8, true);
      if (at + 12 + payloadBytes > input.length) fail('LZVN block truncated');
      outAt = decodeLzvn(input, at + 12, at + 12 + payloadBytes, out, outAt, rawBytes);
      at += 12 + payloadBytes;
    } else if (magic === MAGIC_V1 || magic === MAGIC_V2) {
      const header = magic === MAGIC_V2 ? readV2Header(input, at) : readV1Header(input, at);
      const before = outAt;
      [at, outAt] = decodeFseBlock(input, header, at, out, outAt);
      if (outAt - before !== header.rawBytes)
        fail(`LZFSE block decodes to ${outAt - before} bytes, not ${header.rawBytes}`);
    } else {
      fail(`LZFSE unknown block magic 0x${magic.toString(16)}`);
    }
  }
  if (outAt !== outputBytes) fail(`LZFSE stream decodes to ${outAt} bytes, not ${outputBytes}`);
  return out;
}
