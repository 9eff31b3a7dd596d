// Serpent, the 128-bit block cipher of Anderson, Biham and Knudsen, in its bitslice form with the
// standard little-endian byte order (words 0..3 of a block are its bytes 0-3 .. 12-15, as in dm-crypt,
// nettle and LUKS). Keys of 16, 24 or 32 bytes; shorter keys are padded with a single 1 bit.
// Spec: "Serpent: A Proposal for the AES" (1998), sections 2-3 and Appendix A (the S-boxes).

import { type BlockCipher, readWordLE, rotl, writeWordLE } from './block-cipher.ts';
import { serpentSbox } from './serpent-sboxes.ts';

/** S0..S7 (Appendix A.5), one hex digit per input nibble 0..15; serpent-sboxes.ts is their bitslice form. */
export const SERPENT_SBOXES: readonly Uint8Array[] = [
  '38F1A65BED42709C',
  'FC27905A1BE86D34',
  '86793CAFD1E40B52',
  '0FB8C963D124A75E',
  '1F83C0B6254A9E7D',
  'F52B4A9C03E8D671',
  '72C5846BE91FD3A0',
  '1DF0E82B74CA9356',
].map((text) => Uint8Array.from(text, (digit) => Number.parseInt(digit, 16)));

/** The 32 rounds plus the final key: 33 subkeys of four words. */
const SUBKEY_WORDS = 33 * 4;
const PHI = 0x9e3779b9;
/** serpentSbox's index of the inverse of S-box i is i + 8. */
const INVERSE = 8;

/** `word` rotated left by `bits`, as a signed 32-bit integer: the hot loops stay in V8's int32 range. */
function rol(word: number, bits: number): number {
  return (word << bits) | (word >>> (32 - bits));
}

export class Serpent implements BlockCipher {
  readonly blockBytes = 16;
  private readonly subkeys = new Int32Array(SUBKEY_WORDS);
  /** Where an S-box leaves its four output words. */
  private readonly out = new Int32Array(4);

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
      const at = 8 + 4 * i;
      serpentSbox(
        (((3 - i) % 8) + 8) % 8,
        w[at] as number,
        w[at + 1] as number,
        w[at + 2] as number,
        w[at + 3] as number,
        this.out,
      );
      this.subkeys.set(this.out, 4 * i);
    }
  }

  encryptBlock(data: Uint8Array, offset: number): void {
    const k = this.subkeys;
    const out = this.out;
    let x0 = readWordLE(data, offset) | 0;
    let x1 = readWordLE(data, offset + 4) | 0;
    let x2 = readWordLE(data, offset + 8) | 0;
    let x3 = readWordLE(data, offset + 12) | 0;
    for (let round = 0; round < 32; round++) {
      const at = 4 * round;
      serpentSbox(
        round & 7,
        x0 ^ (k[at] as number),
        x1 ^ (k[at + 1] as number),
        x2 ^ (k[at + 2] as number),
        x3 ^ (k[at + 3] as number),
        out,
      );
      x0 = out[0] as number;
      x1 = out[1] as number;
      x2 = out[2] as number;
      x3 = out[3] as number;
      if (round === 31) break;
      // The linear transformation between rounds (section 2).
      x0 = rol(x0, 13);
      x2 = rol(x2, 3);
      x1 = rol(x1 ^ x0 ^ x2, 1);
      x3 = rol(x3 ^ x2 ^ (x0 << 3), 7);
      x0 = rol(x0 ^ x1 ^ x3, 5);
      x2 = rol(x2 ^ x3 ^ (x1 << 7), 22);
    }
    writeWordLE(data, offset, x0 ^ (k[128] as number));
    writeWordLE(data, offset + 4, x1 ^ (k[129] as number));
    writeWordLE(data, offset + 8, x2 ^ (k[130] as number));
    writeWordLE(data, offset + 12, x3 ^ (k[131] as number));
  }

  decryptBlock(data: Uint8Array, offset: number): void {
    const k = this.subkeys;
    const out = this.out;
    let x0 = readWordLE(data, offset) ^ (k[128] as number);
    let x1 = readWordLE(data, offset + 4) ^ (k[129] as number);
    let x2 = readWordLE(data, offset + 8) ^ (k[130] as number);
    let x3 = readWordLE(data, offset + 12) ^ (k[131] as number);
    for (let round = 31; round >= 0; round--) {
      if (round < 31) {
        // The linear transformation undone, last step first.
        x2 = rol(x2, 10) ^ x3 ^ (x1 << 7);
        x0 = rol(x0, 27) ^ x1 ^ x3;
        x3 = rol(x3, 25);
        x1 = rol(x1, 31);
        x3 = x3 ^ x2 ^ (x0 << 3);
        x1 = x1 ^ x0 ^ x2;
        x2 = rol(x2, 29);
        x0 = rol(x0, 19);
      }
      serpentSbox((round & 7) + INVERSE, x0, x1, x2, x3, out);
      const at = 4 * round;
      x0 = (out[0] as number) ^ (k[at] as number);
      x1 = (out[1] as number) ^ (k[at + 1] as number);
      x2 = (out[2] as number) ^ (k[at + 2] as number);
      x3 = (out[3] as number) ^ (k[at + 3] as number);
    }
    writeWordLE(data, offset, x0);
    writeWordLE(data, offset + 4, x1);
    writeWordLE(data, offset + 8, x2);
    writeWordLE(data, offset + 12, x3);
  }
}
