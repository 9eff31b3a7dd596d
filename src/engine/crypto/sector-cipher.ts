// Per-sector encryption as dm-crypt and qemu's crypto/block.c do it: a cipher (aes-128/192/256 in xts,
// cbc or ecb mode) and an IV generator (plain, plain64, essiv:<hash>) fed with the 512-byte sector
// number, each sector enciphered on its own. Names follow LUKS1's cipher-name / cipher-mode strings.

import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { UnsupportedError } from '../errors.ts';

/** qemu encrypts qcow2, luks and qcow payloads in 512-byte units (QCRYPTO_BLOCK_*_SECTOR_SIZE). */
export const CRYPT_SECTOR_BYTES = 512;

export type CipherMode = 'xts' | 'cbc' | 'ecb';
export type IvGenerator = 'plain' | 'plain64' | 'essiv' | 'none';

export interface CipherSpec {
  /** LUKS's cipher-name ("aes"). */
  cipherName: string;
  mode: CipherMode;
  ivGenerator: IvGenerator;
  /** Hash of the ESSIV generator (essiv only). */
  ivHash?: string;
  /** Bytes of key the volume key holds (xts: both halves). */
  keyBytes: number;
}

const NODE_HASHES: Readonly<Record<string, string>> = {
  sha1: 'sha1',
  sha224: 'sha224',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  ripemd160: 'ripemd160',
};

/** Node's name for a LUKS hash-spec, or undefined for one vdisk does not know. */
export function nodeHashName(hashSpec: string): string | undefined {
  return NODE_HASHES[hashSpec.toLowerCase()];
}

/** Bytes of output of a known hash. */
export function hashBytes(hashSpec: string): number {
  return createHash(nodeHashName(hashSpec) ?? hashSpec).digest().length;
}

function unsupported(feature: string): UnsupportedError {
  return new UnsupportedError({ format: 'luks', feature, message: `Unsupported LUKS cipher: ${feature}` });
}

/**
 * Parses LUKS's cipher name ("aes") and mode ("xts-plain64", "cbc-essiv:sha256", "ecb") for a key of
 * `keyBytes`. Throws UnsupportedError for ciphers node:crypto has no sector mode for, or key sizes that
 * do not fit the cipher.
 */
export function parseCipherSpec(cipherName: string, cipherMode: string, keyBytes: number): CipherSpec {
  if (cipherName !== 'aes') throw unsupported(`${cipherName}-${cipherMode}`);
  const [modeText, ivText = 'none'] = cipherMode.split('-', 2) as [string, string | undefined];
  if (modeText !== 'xts' && modeText !== 'cbc' && modeText !== 'ecb')
    throw unsupported(`${cipherName}-${cipherMode}`);
  const mode: CipherMode = modeText;
  const aesKeyBytes = mode === 'xts' ? keyBytes / 2 : keyBytes;
  if (aesKeyBytes !== 16 && aesKeyBytes !== 24 && aesKeyBytes !== 32)
    throw unsupported(`${cipherName}-${cipherMode} with a ${keyBytes}-byte key`);
  if (mode === 'xts' && aesKeyBytes === 24)
    throw unsupported(`${cipherName}-${cipherMode} with a 48-byte key`);
  let ivGenerator: IvGenerator;
  let ivHash: string | undefined;
  if (ivText === 'plain' || ivText === 'plain64' || ivText === 'none') ivGenerator = ivText;
  else if (ivText.startsWith('essiv:')) {
    ivGenerator = 'essiv';
    ivHash = ivText.slice('essiv:'.length);
    const hashLength = nodeHashName(ivHash) ? hashBytes(ivHash) : 0;
    // The ESSIV key is the hash of the volume key: it must be an AES key size.
    if (hashLength !== 16 && hashLength !== 24 && hashLength !== 32)
      throw unsupported(`${cipherName}-${cipherMode}`);
  } else throw unsupported(`${cipherName}-${cipherMode}`);
  if (mode === 'ecb' && ivGenerator !== 'none') throw unsupported(`${cipherName}-${cipherMode}`);
  if (mode !== 'ecb' && ivGenerator === 'none') throw unsupported(`${cipherName}-${cipherMode}`);
  return { cipherName, mode, ivGenerator, ivHash, keyBytes };
}

/** Encrypts and decrypts whole 512-byte sectors of one volume key. */
export class SectorCipher {
  readonly spec: CipherSpec;
  private readonly key: Buffer;
  private readonly algorithm: string;
  private readonly essivKey: Buffer | undefined;
  private readonly essivAlgorithm: string | undefined;

  constructor(spec: CipherSpec, key: Uint8Array) {
    if (key.length !== spec.keyBytes)
      throw unsupported(
        `a ${key.length}-byte key for ${spec.cipherName}-${spec.mode} (${spec.keyBytes} expected)`,
      );
    this.spec = spec;
    this.key = Buffer.from(key);
    const aesBits = ((spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8).toString();
    this.algorithm = `aes-${aesBits}-${spec.mode}`;
    if (spec.ivGenerator === 'essiv' && spec.ivHash) {
      this.essivKey = createHash(nodeHashName(spec.ivHash) ?? spec.ivHash)
        .update(this.key)
        .digest();
      this.essivAlgorithm = `aes-${this.essivKey.length * 8}-ecb`;
    }
  }

  /** The 16-byte IV of `sector` (a 512-byte sector number, up to 2^53). */
  private iv(sector: number): Buffer | null {
    const iv = Buffer.alloc(16);
    switch (this.spec.ivGenerator) {
      case 'none':
        return null;
      case 'plain':
        // dm-crypt's "plain" is the low 32 bits of the sector number.
        iv.writeUInt32LE(sector % 2 ** 32, 0);
        return iv;
      case 'plain64':
        iv.writeBigUInt64LE(BigInt(sector), 0);
        return iv;
      case 'essiv': {
        iv.writeBigUInt64LE(BigInt(sector), 0);
        const cipher = createCipheriv(this.essivAlgorithm ?? '', this.essivKey ?? Buffer.alloc(0), null);
        cipher.setAutoPadding(false);
        return Buffer.concat([cipher.update(iv), cipher.final()]);
      }
    }
  }

  private run(encrypt: boolean, data: Uint8Array, firstSector: number): Buffer {
    if (data.length % CRYPT_SECTOR_BYTES !== 0)
      throw new RangeError(`encrypted I/O of ${data.length} bytes is not whole 512-byte sectors`);
    const out = Buffer.alloc(data.length);
    for (let at = 0; at < data.length; at += CRYPT_SECTOR_BYTES) {
      const iv = this.iv(firstSector + at / CRYPT_SECTOR_BYTES);
      const cipher = encrypt
        ? createCipheriv(this.algorithm, this.key, iv)
        : createDecipheriv(this.algorithm, this.key, iv);
      cipher.setAutoPadding(false);
      const sector = data.subarray(at, at + CRYPT_SECTOR_BYTES);
      const head = cipher.update(sector);
      head.copy(out, at);
      cipher.final().copy(out, at + head.length);
    }
    return out;
  }

  /** Ciphertext of `data` (whole sectors) whose first sector is number `firstSector`; `data` is untouched. */
  encrypt(data: Uint8Array, firstSector: number): Buffer {
    return this.run(true, data, firstSector);
  }

  /** Plaintext of `data` (whole sectors) whose first sector is number `firstSector`. */
  decrypt(data: Uint8Array, firstSector: number): Buffer {
    return this.run(false, data, firstSector);
  }
}
