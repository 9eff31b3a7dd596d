// bzip2 decompression for UDBZ chunks (type 0x80000006), written from the format's description: "BZh"
// stream header, blocks of Huffman-coded MTF/RLE2 symbols, inverse BWT, RLE1, per-block CRC-32.
// Every buffer is bounded by the stream's declared block size and by the chunk's declared output size.

const BLOCK_MAGIC_HIGH = 0x314159;
const BLOCK_MAGIC_LOW = 0x265359;
const END_MAGIC_HIGH = 0x177245;
const END_MAGIC_LOW = 0x385090;
const MAX_CODE_BITS = 20;
const GROUP_SYMBOLS = 50;
const MAX_SELECTORS = 18002;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let crc = n << 24;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x80000000 ? (crc << 1) ^ 0x04c11db7 : crc << 1;
    table[n] = crc >>> 0;
  }
  return table;
})();

class BitReader {
  private readonly bytes: Uint8Array;
  private bitPosition = 0;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }

  /** Reads `count` (<= 24) bits, most significant first. */
  bits(count: number): number {
    let value = 0;
    for (let i = 0; i < count; i++) {
      const byteIndex = this.bitPosition >> 3;
      if (byteIndex >= this.bytes.length) throw new Error('bzip2 stream truncated');
      value = (value << 1) | ((this.bytes[byteIndex]! >> (7 - (this.bitPosition & 7))) & 1);
      this.bitPosition++;
    }
    return value >>> 0;
  }

  alignToByte(): void {
    this.bitPosition = (this.bitPosition + 7) & ~7;
  }

  get atEnd(): boolean {
    return this.bitPosition >> 3 >= this.bytes.length;
  }
}

interface HuffmanTable {
  minBits: number;
  maxBits: number;
  limit: Int32Array;
  base: Int32Array;
  symbols: Int32Array;
}

function buildTable(lengths: Uint8Array, alphabetSize: number): HuffmanTable {
  let minBits = MAX_CODE_BITS;
  let maxBits = 0;
  for (let i = 0; i < alphabetSize; i++) {
    minBits = Math.min(minBits, lengths[i]!);
    maxBits = Math.max(maxBits, lengths[i]!);
  }
  const symbols = new Int32Array(alphabetSize);
  let next = 0;
  for (let bits = minBits; bits <= maxBits; bits++)
    for (let s = 0; s < alphabetSize; s++) if (lengths[s] === bits) symbols[next++] = s;
  const base = new Int32Array(MAX_CODE_BITS + 2);
  for (let s = 0; s < alphabetSize; s++) base[lengths[s]! + 1]!++;
  for (let i = 1; i < base.length; i++) base[i]! += base[i - 1]!;
  const limit = new Int32Array(MAX_CODE_BITS + 1).fill(-1);
  let code = 0;
  for (let bits = minBits; bits <= maxBits; bits++) {
    code += base[bits + 1]! - base[bits]!;
    limit[bits] = code - 1;
    code <<= 1;
  }
  for (let bits = minBits + 1; bits <= maxBits; bits++)
    base[bits] = ((limit[bits - 1]! + 1) << 1) - base[bits]!;
  return { minBits, maxBits, limit, base, symbols };
}

function decodeSymbol(reader: BitReader, table: HuffmanTable): number {
  let bits = table.minBits;
  let code = reader.bits(bits);
  while (code > table.limit[bits]!) {
    bits++;
    if (bits > table.maxBits) throw new Error('bzip2 invalid Huffman code');
    code = (code << 1) | reader.bits(1);
  }
  const index = code - table.base[bits]!;
  if (index < 0 || index >= table.symbols.length) throw new Error('bzip2 invalid Huffman code');
  return table.symbols[index]!;
}

/** Decodes one block's symbols into `tt` (bytes before the BWT); returns the symbol count and origin. */
function readBlock(reader: BitReader, tt: Uint32Array): { count: number; origin: number; crc: number } {
  const crc = reader.bits(16) * 0x10000 + reader.bits(16);
  if (reader.bits(1)) throw new Error('bzip2 randomised blocks are not supported');
  const origin = reader.bits(24);
  const usedGroups = reader.bits(16);
  const used: number[] = [];
  for (let group = 0; group < 16; group++) {
    if (!(usedGroups & (0x8000 >> group))) continue;
    const bitmap = reader.bits(16);
    for (let j = 0; j < 16; j++) if (bitmap & (0x8000 >> j)) used.push(group * 16 + j);
  }
  if (used.length === 0) throw new Error('bzip2 block uses no symbols');
  const alphabetSize = used.length + 2;
  const tableCount = reader.bits(3);
  if (tableCount < 2 || tableCount > 6) throw new Error('bzip2 invalid table count');
  const selectorCount = reader.bits(15);
  if (selectorCount === 0) throw new Error('bzip2 invalid selector count');
  const order = Array.from({ length: tableCount }, (_, i) => i);
  const selectors = new Uint8Array(Math.min(selectorCount, MAX_SELECTORS));
  for (let i = 0; i < selectorCount; i++) {
    let index = 0;
    while (reader.bits(1)) if (++index >= tableCount) throw new Error('bzip2 invalid selector');
    const table = order[index]!;
    order.splice(index, 1);
    order.unshift(table);
    if (i < selectors.length) selectors[i] = table;
  }
  const tables: HuffmanTable[] = [];
  for (let t = 0; t < tableCount; t++) {
    const lengths = new Uint8Array(alphabetSize);
    let length = reader.bits(5);
    for (let s = 0; s < alphabetSize; s++) {
      for (;;) {
        if (length < 1 || length > MAX_CODE_BITS) throw new Error('bzip2 invalid code length');
        if (!reader.bits(1)) break;
        length += reader.bits(1) ? -1 : 1;
      }
      lengths[s] = length;
    }
    tables.push(buildTable(lengths, alphabetSize));
  }
  const endOfBlock = used.length + 1;
  const mtf = Array.from({ length: used.length }, (_, i) => i);
  let count = 0;
  let groupIndex = -1;
  let groupLeft = 0;
  let table = tables[0]!;
  const nextSymbol = (): number => {
    if (groupLeft === 0) {
      groupIndex++;
      if (groupIndex >= selectors.length) throw new Error('bzip2 ran out of selectors');
      table = tables[selectors[groupIndex]!]!;
      groupLeft = GROUP_SYMBOLS;
    }
    groupLeft--;
    return decodeSymbol(reader, table);
  };
  let symbol = nextSymbol();
  for (;;) {
    if (symbol === endOfBlock) break;
    if (symbol <= 1) {
      let run = 0;
      let weight = 1;
      while (symbol <= 1) {
        run += weight << symbol;
        weight <<= 1;
        if (weight > tt.length * 2) throw new Error('bzip2 run too long');
        symbol = nextSymbol();
      }
      if (count + run > tt.length) throw new Error('bzip2 block larger than its declared size');
      tt.fill(used[mtf[0]!]!, count, count + run);
      count += run;
      continue;
    }
    const index = symbol - 1;
    if (index >= mtf.length) throw new Error('bzip2 invalid MTF index');
    const value = mtf[index]!;
    mtf.splice(index, 1);
    mtf.unshift(value);
    if (count >= tt.length) throw new Error('bzip2 block larger than its declared size');
    tt[count++] = used[value]!;
    symbol = nextSymbol();
  }
  if (origin >= count && count > 0) throw new Error('bzip2 invalid BWT origin');
  return { count, origin, crc };
}

/** Decompresses a bzip2 stream (possibly several concatenated) into exactly `outputBytes` bytes. */
export function decodeBzip2(input: Uint8Array, outputBytes: number): Uint8Array {
  const out = new Uint8Array(outputBytes);
  let outAt = 0;
  const reader = new BitReader(input);
  while (!reader.atEnd) {
    if (reader.bits(8) !== 0x42 || reader.bits(8) !== 0x5a || reader.bits(8) !== 0x68)
      throw new Error('not a bzip2 stream');
    const level = reader.bits(8) - 0x30;
    if (level < 1 || level > 9) throw new Error('bzip2 invalid block size');
    const tt = new Uint32Array(level * 100000);
    for (;;) {
      const high = reader.bits(24);
      const low = reader.bits(24);
      if (high === END_MAGIC_HIGH && low === END_MAGIC_LOW) {
        reader.bits(16);
        reader.bits(16);
        reader.alignToByte();
        break;
      }
      if (high !== BLOCK_MAGIC_HIGH || low !== BLOCK_MAGIC_LOW) throw new Error('bzip2 bad block magic');
      const { count, origin, crc } = readBlock(reader, tt);
      // Inverse BWT: link each position to its successor in the upper 24 bits.
      const starts = new Uint32Array(256);
      for (let i = 0; i < count; i++) starts[tt[i]! & 0xff]!++;
      for (let c = 0, sum = 0; c < 256; c++) {
        const n = starts[c]!;
        starts[c] = sum;
        sum += n;
      }
      for (let i = 0; i < count; i++) {
        const c = tt[i]! & 0xff;
        tt[starts[c]!] = (tt[starts[c]!]! | (i << 8)) >>> 0;
        starts[c]!++;
      }
      let position = count > 0 ? tt[origin]! >>> 8 : 0;
      let blockCrc = 0xffffffff;
      let last = -1;
      let runLength = 0;
      const emit = (byte: number): void => {
        if (outAt >= outputBytes) throw new Error('bzip2 output larger than the declared chunk size');
        out[outAt++] = byte;
        blockCrc = ((blockCrc << 8) ^ CRC_TABLE[((blockCrc >>> 24) ^ byte) & 0xff]!) >>> 0;
      };
      for (let i = 0; i < count; i++) {
        const entry = tt[position]!;
        const byte = entry & 0xff;
        position = entry >>> 8;
        if (runLength === 4) {
          for (let r = 0; r < byte; r++) emit(last);
          runLength = 0;
          last = -1;
          continue;
        }
        if (byte === last) runLength++;
        else {
          last = byte;
          runLength = 1;
        }
        emit(byte);
      }
      if ((blockCrc ^ 0xffffffff) >>> 0 !== crc) throw new Error('bzip2 block CRC mismatch');
    }
  }
  if (outAt !== outputBytes) throw new Error(`bzip2 stream decodes to ${outAt} bytes, not ${outputBytes}`);
  return out;
}
