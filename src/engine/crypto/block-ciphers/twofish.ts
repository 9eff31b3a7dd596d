// Twofish, the 128-bit block cipher of Schneier et al., for 128-, 192- and 256-bit keys, in the paper's
// own byte order (little-endian words), which is the one dm-crypt, nettle and so LUKS use. The key
// schedule folds the key-dependent S-boxes and the MDS matrix into four 256-word tables.
// Spec: "Twofish: A 128-Bit Block Cipher" (1998), sections 4.1-4.3 (F, g, h, q, MDS, RS, subkeys).

import { type BlockCipher, readWordLE, rotl, writeWordLE } from './block-cipher.ts';

/** The 4-bit permutations t0..t3 behind q0 and q1 (section 4.3.5). */
const Q_NIBBLES: readonly (readonly string[])[] = [
  ['817D6F320B59ECA4', 'ECB81235F4A6709D', 'BA5E6D90C8F32471', 'D7F4126E9B3085CA'],
  ['28BDF76E31940AC5', '1E2B4C376DA5F908', '4C75169A0ED82B3F', 'B951C3DE647F208A'],
];

/** q0 and q1 as 256-byte tables. */
const Q: readonly Uint8Array[] = Q_NIBBLES.map((texts) => {
  const [t0, t1, t2, t3] = texts.map((text) =>
    Uint8Array.from(text, (digit) => Number.parseInt(digit, 16)),
  ) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
  const ror4 = (nibble: number): number => ((nibble >>> 1) | (nibble << 3)) & 15;
  return Uint8Array.from({ length: 256 }, (_, x) => {
    const a0 = x >>> 4;
    const b0 = x & 15;
    const a2 = t0[a0 ^ b0] as number;
    const b2 = t1[a0 ^ ror4(b0) ^ ((8 * a0) & 15)] as number;
    const a4 = t2[a2 ^ b2] as number;
    const b4 = t3[a2 ^ ror4(b2) ^ ((8 * a2) & 15)] as number;
    return (b4 << 4) | a4;
  });
});
const Q0 = Q[0] as Uint8Array;
const Q1 = Q[1] as Uint8Array;

/** Product of two bytes in GF(2^8) with the reduction polynomial `poly` (0x169 MDS, 0x14d RS). */
function gfMultiply(a: number, b: number, poly: number): number {
  let product = 0;
  for (let bit = 0; bit < 8; bit++) {
    if (b & (1 << bit)) product ^= a << bit;
  }
  for (let bit = 14; bit >= 8; bit--) {
    if (product & (1 << bit)) product ^= poly << (bit - 8);
  }
  return product;
}

const MDS = [
  [0x01, 0xef, 0x5b, 0x5b],
  [0x5b, 0xef, 0xef, 0x01],
  [0xef, 0x5b, 0x01, 0xef],
  [0xef, 0x01, 0xef, 0x5b],
] as const;

const RS = [
  [0x01, 0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e],
  [0xa4, 0x56, 0x82, 0xf3, 0x1e, 0xc6, 0x68, 0xe5],
  [0x02, 0xa1, 0xfc, 0xc1, 0x47, 0xae, 0x3d, 0x19],
  [0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e, 0x03],
] as const;

/** Column `column` of MDS times `byte`, as the little-endian word it adds to g's output. */
function mdsColumn(column: number, byte: number): number {
  let word = 0;
  for (let row = 0; row < 4; row++) word |= gfMultiply(MDS[row]?.[column] ?? 0, byte, 0x169) << (8 * row);
  return word >>> 0;
}

/** The q applied to byte j at each of h's stages, from the input (stage 4) down to the last (stage 0). */
const H_STAGES: readonly (readonly Uint8Array[])[] = [
  [Q1, Q0, Q0, Q1], // k = 4 only, before L[3]
  [Q1, Q1, Q0, Q0], // k >= 3, before L[2]
  [Q0, Q1, Q0, Q1], // before L[1]
  [Q0, Q0, Q1, Q1], // before L[0]
  [Q1, Q0, Q1, Q0], // after L[0], into the MDS
];

/** Byte j of h's S-box stage (no MDS) for input byte `x` and key words `list` (section 4.3.2). */
function hByte(x: number, j: number, list: Uint32Array): number {
  const k = list.length;
  let y = x;
  for (let stage = 4 - k; stage < 4; stage++) {
    const keyIndex = 3 - stage;
    y =
      (((H_STAGES[stage] as readonly Uint8Array[])[j] as Uint8Array)[y] as number) ^
      (((list[keyIndex] as number) >>> (8 * j)) & 0xff);
  }
  return ((H_STAGES[4] as readonly Uint8Array[])[j] as Uint8Array)[y] as number;
}

/** h(X, L): the key-dependent S-boxes then the MDS matrix. */
function h(x: number, list: Uint32Array): number {
  let word = 0;
  for (let j = 0; j < 4; j++) word ^= mdsColumn(j, hByte((x >>> (8 * j)) & 0xff, j, list));
  return word >>> 0;
}

export class Twofish implements BlockCipher {
  readonly blockBytes = 16;
  /** K0..K39: input whitening, output whitening, then two words per round. */
  private readonly subkeys = new Uint32Array(40);
  /** g(X) = G0[x0] ^ G1[x1] ^ G2[x2] ^ G3[x3] with the key's S-boxes and MDS folded in. */
  private readonly g0 = new Uint32Array(256);
  private readonly g1 = new Uint32Array(256);
  private readonly g2 = new Uint32Array(256);
  private readonly g3 = new Uint32Array(256);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32)
      throw new RangeError(`Twofish takes a 16-, 24- or 32-byte key, not ${key.length}`);
    const k = key.length / 8;
    const even = new Uint32Array(k);
    const odd = new Uint32Array(k);
    const sboxKey = new Uint32Array(k);
    for (let i = 0; i < k; i++) {
      even[i] = readWordLE(key, 8 * i);
      odd[i] = readWordLE(key, 8 * i + 4);
      // S_i = RS . (m_8i .. m_8i+7), stored in reverse order: S = (S_k-1, ..., S_0).
      let word = 0;
      for (let row = 0; row < 4; row++) {
        let byte = 0;
        for (let column = 0; column < 8; column++)
          byte ^= gfMultiply(RS[row]?.[column] ?? 0, key[8 * i + column] as number, 0x14d);
        word |= byte << (8 * row);
      }
      sboxKey[k - 1 - i] = word >>> 0;
    }
    const rho = 0x01010101;
    for (let i = 0; i < 20; i++) {
      const a = h(Math.imul(2 * i, rho) >>> 0, even);
      const b = rotl(h(Math.imul(2 * i + 1, rho) >>> 0, odd), 8);
      this.subkeys[2 * i] = (a + b) >>> 0;
      this.subkeys[2 * i + 1] = rotl((a + 2 * b) >>> 0, 9);
    }
    const tables = [this.g0, this.g1, this.g2, this.g3];
    for (let j = 0; j < 4; j++) {
      const table = tables[j] as Uint32Array;
      for (let x = 0; x < 256; x++) table[x] = mdsColumn(j, hByte(x, j, sboxKey));
    }
  }

  private g(x: number): number {
    return (
      ((this.g0[x & 0xff] as number) ^
        (this.g1[(x >>> 8) & 0xff] as number) ^
        (this.g2[(x >>> 16) & 0xff] as number) ^
        (this.g3[x >>> 24] as number)) >>>
      0
    );
  }

  encryptBlock(data: Uint8Array, offset: number): void {
    const key = this.subkeys;
    let r0 = (readWordLE(data, offset) ^ (key[0] as number)) >>> 0;
    let r1 = (readWordLE(data, offset + 4) ^ (key[1] as number)) >>> 0;
    let r2 = (readWordLE(data, offset + 8) ^ (key[2] as number)) >>> 0;
    let r3 = (readWordLE(data, offset + 12) ^ (key[3] as number)) >>> 0;
    for (let round = 0; round < 16; round++) {
      const t0 = this.g(r0);
      const t1 = this.g(rotl(r1, 8));
      const f0 = (t0 + t1 + (key[2 * round + 8] as number)) >>> 0;
      const f1 = (t0 + 2 * t1 + (key[2 * round + 9] as number)) >>> 0;
      const n2 = rotl((r2 ^ f0) >>> 0, 31);
      const n3 = (rotl(r3, 1) ^ f1) >>> 0;
      r2 = r0;
      r3 = r1;
      r0 = n2;
      r1 = n3;
    }
    // The last round's swap is undone: the output is (R2, R3, R0, R1) whitened.
    writeWordLE(data, offset, r2 ^ (key[4] as number));
    writeWordLE(data, offset + 4, r3 ^ (key[5] as number));
    writeWordLE(data, offset + 8, r0 ^ (key[6] as number));
    writeWordLE(data, offset + 12, r1 ^ (key[7] as number));
  }

  decryptBlock(data: Uint8Array, offset: number): void {
    const key = this.subkeys;
    let r2 = (readWordLE(data, offset) ^ (key[4] as number)) >>> 0;
    let r3 = (readWordLE(data, offset + 4) ^ (key[5] as number)) >>> 0;
    let r0 = (readWordLE(data, offset + 8) ^ (key[6] as number)) >>> 0;
    let r1 = (readWordLE(data, offset + 12) ^ (key[7] as number)) >>> 0;
    for (let round = 15; round >= 0; round--) {
      // Undo the swap, then the round: (r0, r1) were the round's inputs, (n2, n3) its outputs.
      const n2 = r0;
      const n3 = r1;
      r0 = r2;
      r1 = r3;
      const t0 = this.g(r0);
      const t1 = this.g(rotl(r1, 8));
      const f0 = (t0 + t1 + (key[2 * round + 8] as number)) >>> 0;
      const f1 = (t0 + 2 * t1 + (key[2 * round + 9] as number)) >>> 0;
      r2 = (rotl(n2, 1) ^ f0) >>> 0;
      r3 = rotl((n3 ^ f1) >>> 0, 31);
    }
    writeWordLE(data, offset, r0 ^ (key[0] as number));
    writeWordLE(data, offset + 4, r1 ^ (key[1] as number));
    writeWordLE(data, offset + 8, r2 ^ (key[2] as number));
    writeWordLE(data, offset + 12, r3 ^ (key[3] as number));
  }
}
