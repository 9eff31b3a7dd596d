// CAST-128 (CAST5), the 64-bit block cipher of RFC 2144, for the 128-bit key qemu's "cast5-128" uses
// (16 rounds). Words are big-endian, as the RFC numbers bytes x0 (most significant) to xF.
// Spec: RFC 2144 sections 2.1-2.5 (rounds, key schedule) and Appendix A (S-boxes).

import { type BlockCipher, readWordBE, rotl, writeWordBE } from './block-cipher.ts';
import { CAST_SBOXES } from './cast5-sboxes.ts';

const [S1, S2, S3, S4, S5, S6, S7, S8] = CAST_SBOXES as [
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
];

export const CAST5_KEY_BYTES = 16;

/** The 32 key-schedule words K1..K32 of RFC 2144 section 2.4 (index 0..31). */
function keySchedule(key: Uint8Array): Uint32Array {
  const x = new Uint8Array(key);
  const z = new Uint8Array(16);
  const k = new Uint32Array(32);
  const word = (bytes: Uint8Array, at: number): number => readWordBE(bytes, at);
  // One "z from x" step of the schedule (the four z-word lines).
  const zFromX = (): void => {
    writeWordBE(
      z,
      0,
      word(x, 0) ^
        (S5[x[13] as number] as number) ^
        (S6[x[15] as number] as number) ^
        (S7[x[12] as number] as number) ^
        (S8[x[14] as number] as number) ^
        (S7[x[8] as number] as number),
    );
    writeWordBE(
      z,
      4,
      word(x, 8) ^
        (S5[z[0] as number] as number) ^
        (S6[z[2] as number] as number) ^
        (S7[z[1] as number] as number) ^
        (S8[z[3] as number] as number) ^
        (S8[x[10] as number] as number),
    );
    writeWordBE(
      z,
      8,
      word(x, 12) ^
        (S5[z[7] as number] as number) ^
        (S6[z[6] as number] as number) ^
        (S7[z[5] as number] as number) ^
        (S8[z[4] as number] as number) ^
        (S5[x[9] as number] as number),
    );
    writeWordBE(
      z,
      12,
      word(x, 4) ^
        (S5[z[10] as number] as number) ^
        (S6[z[9] as number] as number) ^
        (S7[z[11] as number] as number) ^
        (S8[z[8] as number] as number) ^
        (S6[x[11] as number] as number),
    );
  };
  // One "x from z" step (the four x-word lines).
  const xFromZ = (): void => {
    writeWordBE(
      x,
      0,
      word(z, 8) ^
        (S5[z[5] as number] as number) ^
        (S6[z[7] as number] as number) ^
        (S7[z[4] as number] as number) ^
        (S8[z[6] as number] as number) ^
        (S7[z[0] as number] as number),
    );
    writeWordBE(
      x,
      4,
      word(z, 0) ^
        (S5[x[0] as number] as number) ^
        (S6[x[2] as number] as number) ^
        (S7[x[1] as number] as number) ^
        (S8[x[3] as number] as number) ^
        (S8[z[2] as number] as number),
    );
    writeWordBE(
      x,
      8,
      word(z, 4) ^
        (S5[x[7] as number] as number) ^
        (S6[x[6] as number] as number) ^
        (S7[x[5] as number] as number) ^
        (S8[x[4] as number] as number) ^
        (S5[z[1] as number] as number),
    );
    writeWordBE(
      x,
      12,
      word(z, 12) ^
        (S5[x[10] as number] as number) ^
        (S6[x[9] as number] as number) ^
        (S7[x[11] as number] as number) ^
        (S8[x[8] as number] as number) ^
        (S6[z[3] as number] as number),
    );
  };
  // Four subkeys from bytes `b` picked at indices [a0,a1,a2,a3, extra] per line.
  const subkeys = (b: Uint8Array, at: number, lines: readonly (readonly number[])[]): void => {
    lines.forEach((line, index) => {
      const [i5, i6, i7, i8, extra] = line as [number, number, number, number, number];
      const extraBox = [S5, S6, S7, S8][index] as Uint32Array;
      k[at + index] =
        ((S5[b[i5] as number] as number) ^
          (S6[b[i6] as number] as number) ^
          (S7[b[i7] as number] as number) ^
          (S8[b[i8] as number] as number) ^
          (extraBox[b[extra] as number] as number)) >>>
        0;
    });
  };
  // The schedule makes 16 words twice over (K1-K16, then K17-K32 carrying on from the last x).
  for (let half = 0; half < 32; half += 16) {
    zFromX();
    subkeys(z, half, [
      [8, 9, 7, 6, 2],
      [10, 11, 5, 4, 6],
      [12, 13, 3, 2, 9],
      [14, 15, 1, 0, 12],
    ]);
    xFromZ();
    subkeys(x, half + 4, [
      [3, 2, 12, 13, 8],
      [1, 0, 14, 15, 13],
      [7, 6, 8, 9, 3],
      [5, 4, 10, 11, 7],
    ]);
    zFromX();
    subkeys(z, half + 8, [
      [3, 2, 12, 13, 9],
      [1, 0, 14, 15, 12],
      [7, 6, 8, 9, 2],
      [5, 4, 10, 11, 6],
    ]);
    xFromZ();
    subkeys(x, half + 12, [
      [8, 9, 7, 6, 3],
      [10, 11, 5, 4, 7],
      [12, 13, 3, 2, 8],
      [14, 15, 1, 0, 13],
    ]);
  }
  return k;
}

/** The round function f of type 1, 2 or 3 (round i uses type (i - 1) % 3 + 1). */
function f(type: number, data: number, masking: number, rotation: number): number {
  let i: number;
  if (type === 0) i = rotl((masking + data) >>> 0, rotation);
  else if (type === 1) i = rotl((masking ^ data) >>> 0, rotation);
  else i = rotl((masking - data) >>> 0, rotation);
  const a = S1[i >>> 24] as number;
  const b = S2[(i >>> 16) & 0xff] as number;
  const c = S3[(i >>> 8) & 0xff] as number;
  const d = S4[i & 0xff] as number;
  if (type === 0) return ((a ^ b) - c + d) >>> 0;
  if (type === 1) return ((a - b + c) ^ d) >>> 0;
  return (((a + b) ^ c) - d) >>> 0;
}

export class Cast5 implements BlockCipher {
  readonly blockBytes = 8;
  /** Masking keys Km1..Km16. */
  private readonly masking: Uint32Array;
  /** Rotation keys Kr1..Kr16 (the low five bits of K17..K32). */
  private readonly rotation: Uint8Array;

  constructor(key: Uint8Array) {
    if (key.length !== CAST5_KEY_BYTES)
      throw new RangeError(`CAST-128 takes a 16-byte key, not ${key.length}`);
    const k = keySchedule(key);
    this.masking = k.slice(0, 16);
    this.rotation = Uint8Array.from(k.subarray(16), (word) => word & 31);
  }

  encryptBlock(data: Uint8Array, offset: number): void {
    let left = readWordBE(data, offset);
    let right = readWordBE(data, offset + 4);
    for (let round = 0; round < 16; round++) {
      const next =
        (left ^ f(round % 3, right, this.masking[round] as number, this.rotation[round] as number)) >>> 0;
      left = right;
      right = next;
    }
    writeWordBE(data, offset, right);
    writeWordBE(data, offset + 4, left);
  }

  decryptBlock(data: Uint8Array, offset: number): void {
    let left = readWordBE(data, offset);
    let right = readWordBE(data, offset + 4);
    for (let round = 15; round >= 0; round--) {
      const next =
        (left ^ f(round % 3, right, this.masking[round] as number, this.rotation[round] as number)) >>> 0;
      left = right;
      right = next;
    }
    writeWordBE(data, offset, right);
    writeWordBE(data, offset + 4, left);
  }
}
