// The block ciphers vdisk implements itself because node:crypto (OpenSSL 3) has none of them, keyed
// by LUKS's cipher-name. Which key sizes qemu-img 7.2 (nettle) offers for each is data here too.

import type { BlockCipher } from './block-cipher.ts';
import { Cast5 } from './cast5.ts';
import { Serpent } from './serpent.ts';
import { Twofish } from './twofish.ts';

export interface BlockCipherFamily {
  blockBytes: number;
  /** Key sizes in bytes, as qemu's cipher-alg names them (twofish-128 = 16). */
  keyBytes: readonly number[];
  create(key: Uint8Array): BlockCipher;
}

export const BLOCK_CIPHERS: Readonly<Record<string, BlockCipherFamily>> = {
  twofish: { blockBytes: 16, keyBytes: [16, 24, 32], create: (key) => new Twofish(key) },
  serpent: { blockBytes: 16, keyBytes: [16, 24, 32], create: (key) => new Serpent(key) },
  cast5: { blockBytes: 8, keyBytes: [16], create: (key) => new Cast5(key) },
};

/** The family of a LUKS cipher-name vdisk enciphers in TypeScript, or undefined. */
export function blockCipherFamily(cipherName: string): BlockCipherFamily | undefined {
  return Object.hasOwn(BLOCK_CIPHERS, cipherName) ? BLOCK_CIPHERS[cipherName] : undefined;
}
