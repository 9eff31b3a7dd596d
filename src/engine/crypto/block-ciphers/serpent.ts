// Serpent, the 128-bit block cipher of Anderson, Biham and Knudsen, in its bitslice form with the
// standard little-endian byte order (words 0..3 of a block are its bytes 0-3 .. 12-15, as in dm-crypt,
// nettle and LUKS). Keys of 16, 24 or 32 bytes; shorter keys are padded with a single 1 bit.
// Spec: "Serpent: A Proposal for the AES" (1998), sections 2-3 and Appendix A (the S-boxes).

import { type BlockCipher, readWordLE, rotl, writeWordLE } from './block-cipher.ts';

/** S0..S7 (Appendix A.5), one hex digit per input nibble 0..15. */
const SBOX_TEXT = [
  '38F1A65BED42709C',
  'FC27905A1BE86D34',
  '86793CAFD1E40B52',
  '0FB8C963D124A75E',
  '1F83C0B6254A9E7D',
  'F52B4A9C03E8D671',
  '72C5846BE91FD3A0',
  '1DF0E82B74CA9356',
];

/**
 * A 4-bit S-box as its algebraic normal form: for each output bit, the monomials (subsets of the four
 * input bits, as a 4-bit mask) whose XOR it is. Applying it to four words at once is the bitslice form.
 */
function algebraicNormalForm(table: Uint8Array): Uint8Array[] {
  return [0, 1, 2, 3].map((bit) => {
    // Moebius transform of the output bit's truth table.
    const coefficients = Uint8Array.from(table, (value) => (value >>> bit) & 1);
    for (let step = 1; step < 16; step <<= 1)
      for (let mask = 0; mask < 16; mask++)
        if (mask & step)
          coefficients[mask] = (coefficients[mask] as number) ^ (coefficients[mask ^ step] as number);
    return Uint8Array.from(
      Array.from({ length: 16 }, (_, mask) => mask).filter((mask) => coefficients[mask] === 1),
    );
  });
}

function inverse(table: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  table.forEach((value, index) => {
    out[value] = index;
  });
  return out;
}

const SBOXES = SBOX_TEXT.map((text) => Uint8Array.from(text, (digit) => Number.parseInt(digit, 16)));
const FORWARD = SBOXES.map(algebraicNormalForm);
const BACKWARD = SBOXES.map((table) => algebraicNormalForm(inverse(table)));

/** The 32 rounds plus the final key: 33 subkeys of four words. */
const SUBKEY_WORDS = 33 * 4;
const PHI = 0x9e3779b9;

export class Serpent implements BlockCipher {
  readonly blockBytes = 16;
  private readonly subkeys = new Uint32Array(SUBKEY_WORDS);
  /** The four words being worked on, and the 16 monomials of an S-box's input. */
  private readonly state = new Uint32Array(4);
  private readonly monomials = new Uint32Array(16);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32)
      throw new RangeError(`Serpent takes a 16-, 24- or 32-byte key, not ${key.length}`);
    const padded = new Uint8Array(32);
    padded.set(key);
    if (key.length < 32) padded[key.length] = 1;
    // The prekeys w_-8 .. w_131, then each subkey is S_(3 - i) mod 8 of four of them.
    const w = new Uint32Array(8 + SUBKEY_WORDS);
    for (let i = 0; i < 8; i++) w[i] = readWordLE(padded, 4 * i);
    for (let i = 0; i < SUBKEY_WORDS; i++) {
      const mixed =
        (w[i] as number) ^ (w[i + 3] as number) ^ (w[i + 5] as number) ^ (w[i + 7] as number) ^ PHI ^ i;
      w[i + 8] = rotl(mixed >>> 0, 11);
    }
    for (let i = 0; i < 33; i++) {
      this.state.set(w.subarray(8 + 4 * i, 12 + 4 * i));
      this.substitute(FORWARD[(((3 - i) % 8) + 8) % 8] as Uint8Array[]);
      this.subkeys.set(this.state, 4 * i);
    }
  }

  /** Applies one S-box (in normal form) to the four state words, bit column by bit column. */
  private substitute(form: Uint8Array[]): void {
    const s = this.state;
    const m = this.monomials;
    const x0 = s[0] as number;
    const x1 = s[1] as number;
    const x2 = s[2] as number;
    const x3 = s[3] as number;
    m[0] = 0xffffffff;
    m[1] = x0;
    m[2] = x1;
    m[3] = x0 & x1;
    m[4] = x2;
    m[5] = x0 & x2;
    m[6] = x1 & x2;
    m[7] = x0 & x1 & x2;
    for (let mask = 8; mask < 16; mask++) m[mask] = (m[mask - 8] as number) & x3;
    for (let bit = 0; bit < 4; bit++) {
      const terms = form[bit] as Uint8Array;
      let out = 0;
      for (let t = 0; t < terms.length; t++) out ^= m[terms[t] as number] as number;
      s[bit] = out;
    }
  }

  private mixKey(round: number): void {
    const s = this.state;
    const k = this.subkeys;
    for (let i = 0; i < 4; i++) s[i] = (s[i] as number) ^ (k[4 * round + i] as number);
  }

  /** The linear transformation between rounds (section 2). */
  private linear(): void {
    const s = this.state;
    const x0 = rotl(s[0] as number, 13);
    const x2 = rotl(s[2] as number, 3);
    const x1 = rotl(((s[1] as number) ^ x0 ^ x2) >>> 0, 1);
    const x3 = rotl(((s[3] as number) ^ x2 ^ (x0 << 3)) >>> 0, 7);
    s[0] = rotl((x0 ^ x1 ^ x3) >>> 0, 5);
    s[2] = rotl((x2 ^ x3 ^ (x1 << 7)) >>> 0, 22);
    s[1] = x1;
    s[3] = x3;
  }

  private inverseLinear(): void {
    const s = this.state;
    const x2 = rotl(s[2] as number, 10) ^ (s[3] as number) ^ ((s[1] as number) << 7);
    const x0 = rotl(s[0] as number, 27) ^ (s[1] as number) ^ (s[3] as number);
    const x3 = rotl(s[3] as number, 25);
    const x1 = rotl(s[1] as number, 31);
    const y3 = x3 ^ x2 ^ (x0 << 3);
    const y1 = x1 ^ x0 ^ x2;
    s[0] = rotl(x0 >>> 0, 19);
    s[1] = y1;
    s[2] = rotl(x2 >>> 0, 29);
    s[3] = y3;
  }

  encryptBlock(data: Uint8Array, offset: number): void {
    const s = this.state;
    for (let i = 0; i < 4; i++) s[i] = readWordLE(data, offset + 4 * i);
    for (let round = 0; round < 32; round++) {
      this.mixKey(round);
      this.substitute(FORWARD[round % 8] as Uint8Array[]);
      if (round < 31) this.linear();
    }
    this.mixKey(32);
    for (let i = 0; i < 4; i++) writeWordLE(data, offset + 4 * i, s[i] as number);
  }

  decryptBlock(data: Uint8Array, offset: number): void {
    const s = this.state;
    for (let i = 0; i < 4; i++) s[i] = readWordLE(data, offset + 4 * i);
    this.mixKey(32);
    for (let round = 31; round >= 0; round--) {
      if (round < 31) this.inverseLinear();
      this.substitute(BACKWARD[round % 8] as Uint8Array[]);
      this.mixKey(round);
    }
    for (let i = 0; i < 4; i++) writeWordLE(data, offset + 4 * i, s[i] as number);
  }
}
