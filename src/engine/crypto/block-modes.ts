// ECB, CBC, XTS and CTR over 512-byte sectors for the block ciphers written in TypeScript
// (block-ciphers/), each sector on its own with the IV of its number, as qemu's crypto/block.c does.
// XTS is IEEE 1619 without ciphertext stealing (a sector is 32 whole blocks); CTR counts the IV up as
// one big-endian number per block (nettle's ctr_crypt). AES stays on node:crypto (sector-cipher.ts).

import type { BlockCipher } from './block-ciphers/block-cipher.ts';

export type BlockMode = 'ecb' | 'cbc' | 'xts' | 'ctr';

/** Writes the IV of `sector` into `iv` (blockBytes long). */
export type IvWriter = (sector: number, iv: Uint8Array) => void;

const SECTOR_BYTES = 512;

/** Encrypts and decrypts whole sectors with one block cipher in one mode; no allocation per call but the output. */
export class BlockModeSectors {
  private readonly mode: BlockMode;
  private readonly cipher: BlockCipher;
  /** XTS: the cipher of the second key half, which enciphers the tweak. */
  private readonly tweakCipher: BlockCipher | undefined;
  private readonly writeIv: IvWriter;
  private readonly blockBytes: number;
  /** Per-sector scratch: the IV / chaining value / tweak / counter, and one saved block. */
  private readonly iv: Uint8Array;
  private readonly saved: Uint8Array;

  constructor(mode: BlockMode, cipher: BlockCipher, writeIv: IvWriter, tweakCipher?: BlockCipher) {
    if (mode === 'xts' && (cipher.blockBytes !== 16 || !tweakCipher))
      throw new RangeError('XTS needs a 128-bit block cipher and a tweak key');
    this.mode = mode;
    this.cipher = cipher;
    this.tweakCipher = tweakCipher;
    this.writeIv = writeIv;
    this.blockBytes = cipher.blockBytes;
    this.iv = new Uint8Array(this.blockBytes);
    this.saved = new Uint8Array(this.blockBytes);
  }

  /** Ciphertext (encrypt) or plaintext of `data`, whole sectors, the first numbered `firstSector`. */
  run(encrypt: boolean, data: Uint8Array, firstSector: number): Buffer {
    const out = Buffer.from(data);
    for (let at = 0; at < out.length; at += SECTOR_BYTES) {
      const sector = firstSector + at / SECTOR_BYTES;
      switch (this.mode) {
        case 'ecb':
          this.ecb(encrypt, out, at);
          break;
        case 'cbc':
          this.writeIv(sector, this.iv);
          if (encrypt) this.cbcEncrypt(out, at);
          else this.cbcDecrypt(out, at);
          break;
        case 'xts':
          this.writeIv(sector, this.iv);
          this.xts(encrypt, out, at);
          break;
        case 'ctr':
          this.writeIv(sector, this.iv);
          this.ctr(out, at);
          break;
      }
    }
    return out;
  }

  private ecb(encrypt: boolean, data: Uint8Array, start: number): void {
    const end = start + SECTOR_BYTES;
    for (let at = start; at < end; at += this.blockBytes) {
      if (encrypt) this.cipher.encryptBlock(data, at);
      else this.cipher.decryptBlock(data, at);
    }
  }

  private cbcEncrypt(data: Uint8Array, start: number): void {
    const size = this.blockBytes;
    const end = start + SECTOR_BYTES;
    // The first block chains with the IV, every later one with the ciphertext just before it.
    for (let i = 0; i < size; i++) data[start + i] = (data[start + i] as number) ^ (this.iv[i] as number);
    this.cipher.encryptBlock(data, start);
    for (let at = start + size; at < end; at += size) {
      for (let i = 0; i < size; i++)
        data[at + i] = (data[at + i] as number) ^ (data[at - size + i] as number);
      this.cipher.encryptBlock(data, at);
    }
  }

  private cbcDecrypt(data: Uint8Array, start: number): void {
    const size = this.blockBytes;
    const end = start + SECTOR_BYTES;
    const chain = this.iv;
    const saved = this.saved;
    for (let at = start; at < end; at += size) {
      saved.set(data.subarray(at, at + size));
      this.cipher.decryptBlock(data, at);
      for (let i = 0; i < size; i++) data[at + i] = (data[at + i] as number) ^ (chain[i] as number);
      chain.set(saved);
    }
  }

  private xts(encrypt: boolean, data: Uint8Array, start: number): void {
    const tweak = this.iv;
    (this.tweakCipher as BlockCipher).encryptBlock(tweak, 0);
    const end = start + SECTOR_BYTES;
    for (let at = start; at < end; at += 16) {
      for (let i = 0; i < 16; i++) data[at + i] = (data[at + i] as number) ^ (tweak[i] as number);
      if (encrypt) this.cipher.encryptBlock(data, at);
      else this.cipher.decryptBlock(data, at);
      for (let i = 0; i < 16; i++) data[at + i] = (data[at + i] as number) ^ (tweak[i] as number);
      // Tweak times x in GF(2^128), little-endian bytes, reduced by x^128 = x^7 + x^2 + x + 1.
      let carry = 0;
      for (let i = 0; i < 16; i++) {
        const byte = tweak[i] as number;
        tweak[i] = ((byte << 1) | carry) & 0xff;
        carry = byte >>> 7;
      }
      if (carry) tweak[0] = (tweak[0] as number) ^ 0x87;
    }
  }

  private ctr(data: Uint8Array, start: number): void {
    const size = this.blockBytes;
    const counter = this.iv;
    const keystream = this.saved;
    const end = start + SECTOR_BYTES;
    for (let at = start; at < end; at += size) {
      keystream.set(counter);
      this.cipher.encryptBlock(keystream, 0);
      for (let i = 0; i < size; i++) data[at + i] = (data[at + i] as number) ^ (keystream[i] as number);
      // Count up as one big-endian number, wrapping at 2^(8 * size).
      for (let i = size - 1; i >= 0; i--) {
        counter[i] = ((counter[i] as number) + 1) & 0xff;
        if (counter[i] !== 0) break;
      }
    }
  }
}
