// The one interface the sector modes (../block-modes.ts) need from a block cipher written in TypeScript:
// encipher or decipher one block in place. Keys are expanded in the constructor, once per volume.

export interface BlockCipher {
  /** Block size in bytes: 16 (Serpent, Twofish) or 8 (CAST-128). */
  readonly blockBytes: number;
  /** Enciphers the block at `data[offset .. offset + blockBytes)` in place. */
  encryptBlock(data: Uint8Array, offset: number): void;
  /** Deciphers the block at `data[offset .. offset + blockBytes)` in place. */
  decryptBlock(data: Uint8Array, offset: number): void;
}

/** The 32-bit little-endian word at `data[offset]`. */
export function readWordLE(data: Uint8Array, offset: number): number {
  return (
    ((data[offset] as number) |
      ((data[offset + 1] as number) << 8) |
      ((data[offset + 2] as number) << 16) |
      ((data[offset + 3] as number) << 24)) >>>
    0
  );
}

/** Stores `word` little-endian at `data[offset]`. */
export function writeWordLE(data: Uint8Array, offset: number, word: number): void {
  data[offset] = word;
  data[offset + 1] = word >>> 8;
  data[offset + 2] = word >>> 16;
  data[offset + 3] = word >>> 24;
}

/** The 32-bit big-endian word at `data[offset]`. */
export function readWordBE(data: Uint8Array, offset: number): number {
  return (
    (((data[offset] as number) << 24) |
      ((data[offset + 1] as number) << 16) |
      ((data[offset + 2] as number) << 8) |
      (data[offset + 3] as number)) >>>
    0
  );
}

/** Stores `word` big-endian at `data[offset]`. */
export function writeWordBE(data: Uint8Array, offset: number, word: number): void {
  data[offset] = word >>> 24;
  data[offset + 1] = word >>> 16;
  data[offset + 2] = word >>> 8;
  data[offset + 3] = word;
}

/** `word` rotated left by `bits` (0..31). */
export function rotl(word: number, bits: number): number {
  return ((word << bits) | (word >>> (32 - bits))) >>> 0;
}
