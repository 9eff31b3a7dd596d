// qcow's and qcow2's legacy AES encryption (crypt_method 1): AES-128-CBC with a plain64 IV of the
// guest sector, the key being the passphrase's first 16 bytes, zero-padded. Weak (no key derivation,
// predictable IVs); qemu only reads it, and so does vdisk. Spec: qcow2.txt "crypt_method".

import { parseCipherSpec, SectorCipher } from './sector-cipher.ts';

/** The cipher of a legacy AES image opened with `passphrase`. */
export function legacyAesCipher(passphrase: Uint8Array): SectorCipher {
  const key = Buffer.alloc(16);
  key.set(passphrase.subarray(0, 16));
  return new SectorCipher(parseCipherSpec('aes', 'cbc-plain64', 16), key);
}
