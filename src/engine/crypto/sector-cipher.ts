// Per-sector encryption as dm-crypt and qemu's crypto/block.c do it: a cipher (aes, twofish, serpent
// or cast5 in xts, cbc, ecb or ctr mode) and an IV generator (plain, plain64, essiv:<hash>) fed with the
// 512-byte sector number, each sector enciphered on its own. Names follow LUKS1's cipher-name /
// cipher-mode strings. AES runs on node:crypto; the others on block-ciphers/ through block-modes.ts.

import type { KeyObject } from 'node:crypto';
import { createCipheriv, createDecipheriv, createHash, createSecretKey } from '../lazy-crypto.ts';
import { endianness } from 'node:os';
import { UnsupportedError } from '../errors.ts';
import type { BlockCipher } from './block-ciphers/block-cipher.ts';
import { blockCipherFamily } from './block-ciphers/registry.ts';
import { BlockModeSectors } from './block-modes.ts';

/** qemu encrypts qcow2, luks and qcow payloads in 512-byte units (QCRYPTO_BLOCK_*_SECTOR_SIZE). */
export const CRYPT_SECTOR_BYTES = 512;

export type CipherMode = 'xts' | 'cbc' | 'ecb' | 'ctr';
export type IvGenerator = 'plain' | 'plain64' | 'essiv' | 'none';

export interface CipherSpec {
  /** LUKS's cipher-name ("aes", "twofish", "serpent", "cast5"). */
  cipherName: string;
  mode: CipherMode;
  ivGenerator: IvGenerator;
  /** Hash of the ESSIV generator (essiv only). */
  ivHash?: string;
  /** Bytes of key the volume key holds (xts: both halves). */
  keyBytes: number;
}

/** AES's key sizes; the other ciphers' come from block-ciphers/registry.ts. */
const AES_KEY_BYTES: readonly number[] = [16, 24, 32];

/** Key sizes in bytes `cipherName` takes, or undefined for a cipher vdisk does not implement. */
export function cipherKeySizes(cipherName: string): readonly number[] | undefined {
  return cipherName === 'aes' ? AES_KEY_BYTES : blockCipherFamily(cipherName)?.keyBytes;
}

/** Block size in bytes of a cipher vdisk implements. */
function cipherBlockBytes(cipherName: string): number {
  return cipherName === 'aes' ? 16 : (blockCipherFamily(cipherName)?.blockBytes ?? 16);
}

const NODE_HASHES: Readonly<Record<string, string>> = {
  md5: 'md5',
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
 * Parses LUKS's cipher name ("aes", "twofish", "serpent", "cast5") and mode ("xts-plain64",
 * "cbc-essiv:sha256", "ctr-plain", "ecb-plain64" as qemu writes it, or a bare "ecb") for a key of
 * `keyBytes`. Throws UnsupportedError naming the cipher for ciphers, modes or key sizes vdisk has no
 * implementation of.
 */
export function parseCipherSpec(cipherName: string, cipherMode: string, keyBytes: number): CipherSpec {
  const keySizes = cipherKeySizes(cipherName);
  if (!keySizes) throw unsupported(`${cipherName}-${cipherMode}`);
  const [modeText, ivText = 'none'] = cipherMode.split('-', 2) as [string, string | undefined];
  if (modeText !== 'xts' && modeText !== 'cbc' && modeText !== 'ecb' && modeText !== 'ctr')
    throw unsupported(`${cipherName}-${cipherMode}`);
  const mode: CipherMode = modeText;
  // XTS is defined for 128-bit blocks only (qemu refuses it for cast5 too).
  if (mode === 'xts' && cipherBlockBytes(cipherName) !== 16) throw unsupported(`${cipherName}-${cipherMode}`);
  const cipherKeyBytes = mode === 'xts' ? keyBytes / 2 : keyBytes;
  if (!keySizes.includes(cipherKeyBytes))
    throw unsupported(`${cipherName}-${cipherMode} with a ${keyBytes}-byte key`);
  let ivGenerator: IvGenerator;
  let ivHash: string | undefined;
  if (ivText === 'plain' || ivText === 'plain64' || ivText === 'none') ivGenerator = ivText;
  else if (ivText.startsWith('essiv:')) {
    ivGenerator = 'essiv';
    ivHash = ivText.slice('essiv:'.length);
    const hashLength = nodeHashName(ivHash) ? hashBytes(ivHash) : 0;
    // The ESSIV key is the hash of the volume key: it must be a key size of the same cipher.
    if (!keySizes.includes(hashLength)) throw unsupported(`${cipherName}-${cipherMode}`);
  } else throw unsupported(`${cipherName}-${cipherMode}`);
  // ECB takes no IV: qemu still names a generator ("ecb-plain64") and ignores it.
  if (mode !== 'ecb' && ivGenerator === 'none') throw unsupported(`${cipherName}-${cipherMode}`);
  return { cipherName, mode, ivGenerator, ivHash, keyBytes };
}

/** The bulk paths view buffers as 32-bit words in the byte order the cipher blocks use. */
const IS_LITTLE_ENDIAN = endianness() === 'LE';

/**
 * AES-ECB over whole blocks into a word-aligned buffer. `key` is a KeyObject made once: preparing a raw
 * key on every call cost more than enciphering 64 KiB.
 */
function ecb(encrypt: boolean, algorithm: string, key: KeyObject | Uint8Array, data: Uint8Array): Buffer {
  const cipher = encrypt ? createCipheriv(algorithm, key, null) : createDecipheriv(algorithm, key, null);
  cipher.setAutoPadding(false);
  const head = cipher.update(data);
  // ECB without padding on whole blocks leaves nothing for final(); still call it to end the context.
  const tail = cipher.final();
  if (tail.length === 0 && head.byteOffset % 4 === 0 && head.length === data.length) return head;
  const out = Buffer.allocUnsafeSlow(data.length);
  head.copy(out, 0);
  tail.copy(out, head.length);
  return out;
}

/** target ^= mask, as 32-bit words (`target` is word aligned). */
function xorWords(target: Buffer, maskWords: Uint32Array): void {
  const words = new Uint32Array(target.buffer, target.byteOffset, target.length / 4);
  const count = words.length;
  for (let index = 0; index < count; index++)
    words[index] = (words[index] as number) ^ (maskWords[index] as number);
}

/** Encrypts and decrypts whole 512-byte sectors of one volume key. */
export class SectorCipher {
  readonly spec: CipherSpec;
  private readonly key: Buffer;
  private readonly algorithm: string;
  private readonly essivKey: Buffer | undefined;
  private readonly essivAlgorithm: string | undefined;
  /** XTS halves as KeyObjects for the bulk path (data key, tweak key). */
  private readonly xtsKeys: { data: KeyObject; tweak: KeyObject } | undefined;
  /** The sector modes of a cipher written in TypeScript (anything but AES). */
  private readonly blockModes: BlockModeSectors | undefined;

  constructor(spec: CipherSpec, key: Uint8Array) {
    if (key.length !== spec.keyBytes)
      throw unsupported(
        `a ${key.length}-byte key for ${spec.cipherName}-${spec.mode} (${spec.keyBytes} expected)`,
      );
    this.spec = spec;
    this.key = Buffer.from(key);
    const family = blockCipherFamily(spec.cipherName);
    if (family) {
      this.algorithm = spec.cipherName;
      this.blockModes = blockModeSectors(spec, this.key, family.create);
      return;
    }
    const aesBits = ((spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8).toString();
    this.algorithm = `aes-${aesBits}-${spec.mode}`;
    if (spec.mode === 'xts') {
      const half = spec.keyBytes / 2;
      this.xtsKeys = {
        data: createSecretKey(this.key.subarray(0, half)),
        tweak: createSecretKey(this.key.subarray(half)),
      };
    }
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

  /** The IVs of `sectorCount` sectors from `firstSector`, 16 bytes each, computed in one pass. */
  private ivs(firstSector: number, sectorCount: number): Buffer {
    const ivs = Buffer.alloc(sectorCount * 16);
    for (let index = 0; index < sectorCount; index++) {
      const sector = firstSector + index;
      if (this.spec.ivGenerator === 'plain') ivs.writeUInt32LE(sector % 2 ** 32, index * 16);
      else ivs.writeBigUInt64LE(BigInt(sector), index * 16);
    }
    if (this.spec.ivGenerator !== 'essiv') return ivs;
    return ecb(true, this.essivAlgorithm ?? '', this.essivKey ?? Buffer.alloc(0), ivs);
  }

  /**
   * XTS over many sectors with two ECB passes instead of one cipher object per sector (20x faster):
   * each sector's tweak is E(K2, IV), multiplied by x in GF(2^128) from block to block (IEEE 1619).
   */
  private xtsBulk(encrypt: boolean, data: Uint8Array, firstSector: number): Buffer {
    const halfBytes = this.spec.keyBytes / 2;
    const ecbAlgorithm = `aes-${halfBytes * 8}-ecb`;
    const sectorCount = data.length / CRYPT_SECTOR_BYTES;
    const keys = this.xtsKeys as { data: KeyObject; tweak: KeyObject };
    const tweaks = ecb(true, ecbAlgorithm, keys.tweak, this.ivs(firstSector, sectorCount));
    const tweakWords = new Uint32Array(tweaks.buffer, tweaks.byteOffset, tweaks.length / 4);
    // Every byte of mask and work is written below: no need to zero them first.
    const mask = Buffer.allocUnsafeSlow(data.length);
    const maskWords = new Uint32Array(mask.buffer, mask.byteOffset, mask.length / 4);
    const work = Buffer.allocUnsafeSlow(data.length);
    work.set(data);
    const workWords = new Uint32Array(work.buffer, work.byteOffset, work.length / 4);
    for (let sector = 0; sector < sectorCount; sector++) {
      let w0 = tweakWords[sector * 4] as number;
      let w1 = tweakWords[sector * 4 + 1] as number;
      let w2 = tweakWords[sector * 4 + 2] as number;
      let w3 = tweakWords[sector * 4 + 3] as number;
      for (let block = 0, at = sector * 128; block < 32; block++, at += 4) {
        maskWords[at] = w0;
        maskWords[at + 1] = w1;
        maskWords[at + 2] = w2;
        maskWords[at + 3] = w3;
        workWords[at] = (workWords[at] as number) ^ w0;
        workWords[at + 1] = (workWords[at + 1] as number) ^ w1;
        workWords[at + 2] = (workWords[at + 2] as number) ^ w2;
        workWords[at + 3] = (workWords[at + 3] as number) ^ w3;
        // Multiply by x: a 128-bit little-endian shift left, reduced by x^128 = x^7 + x^2 + x + 1.
        const carry = w3 >>> 31;
        w3 = ((w3 << 1) | (w2 >>> 31)) >>> 0;
        w2 = ((w2 << 1) | (w1 >>> 31)) >>> 0;
        w1 = ((w1 << 1) | (w0 >>> 31)) >>> 0;
        w0 = ((w0 << 1) ^ (carry * 0x87)) >>> 0;
      }
    }
    const out = ecb(encrypt, ecbAlgorithm, keys.data, work);
    xorWords(out, maskWords);
    return out;
  }

  /** CBC decryption of many sectors: one ECB pass, then each block XORed with the one before (the IV first). */
  private cbcDecryptBulk(data: Uint8Array, firstSector: number): Buffer {
    const sectorCount = data.length / CRYPT_SECTOR_BYTES;
    const ivs = this.ivs(firstSector, sectorCount);
    const mask = Buffer.alloc(data.length);
    mask.set(data.subarray(0, data.length - 16), 16);
    for (let sector = 0; sector < sectorCount; sector++)
      ivs.copy(mask, sector * CRYPT_SECTOR_BYTES, sector * 16, sector * 16 + 16);
    const out = ecb(false, `aes-${this.spec.keyBytes * 8}-ecb`, this.key, data);
    xorWords(out, new Uint32Array(mask.buffer, mask.byteOffset, mask.length / 4));
    return out;
  }

  private run(encrypt: boolean, data: Uint8Array, firstSector: number): Buffer {
    if (data.length % CRYPT_SECTOR_BYTES !== 0)
      throw new RangeError(`encrypted I/O of ${data.length} bytes is not whole 512-byte sectors`);
    if (this.blockModes) return this.blockModes.run(encrypt, data, firstSector);
    if (this.spec.mode === 'ecb') return ecb(encrypt, this.algorithm, this.key, data);
    // OpenSSL has no aes-192-xts: XTS runs as ECB passes, whatever the IV generator.
    if (this.spec.mode === 'xts' && IS_LITTLE_ENDIAN) return this.xtsBulk(encrypt, data, firstSector);
    if (IS_LITTLE_ENDIAN && this.spec.mode === 'cbc' && !encrypt)
      return this.cbcDecryptBulk(data, firstSector);
    return this.runPerSector(encrypt, data, firstSector);
  }

  /** One node:crypto cipher per sector: the reference the bulk paths are tested against. */
  runPerSector(encrypt: boolean, data: Uint8Array, firstSector: number): Buffer {
    const out = Buffer.alloc(data.length);
    for (let at = 0; at < data.length; at += CRYPT_SECTOR_BYTES) {
      const iv = this.spec.mode === 'ecb' ? null : this.iv(firstSector + at / CRYPT_SECTOR_BYTES);
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

/** Writes plain64's IV, the sector number as a 64-bit little-endian integer (truncated to 8-byte blocks). */
function writePlain64(sector: number, iv: Uint8Array): void {
  const low = sector % 2 ** 32;
  const high = Math.floor(sector / 2 ** 32);
  for (let i = 0; i < 4; i++) iv[i] = (low >>> (8 * i)) & 0xff;
  for (let i = 0; i < 4; i++) iv[4 + i] = (high >>> (8 * i)) & 0xff;
}

/**
 * The sector modes of `spec` over a TypeScript block cipher: XTS splits the key into data and tweak
 * halves; ESSIV enciphers the plain64 IV with the same cipher keyed by the hash of the volume key.
 */
function blockModeSectors(
  spec: CipherSpec,
  key: Buffer,
  create: (key: Uint8Array) => BlockCipher,
): BlockModeSectors {
  const half = spec.keyBytes / 2;
  const cipher = create(spec.mode === 'xts' ? key.subarray(0, half) : key);
  const tweakCipher = spec.mode === 'xts' ? create(key.subarray(half)) : undefined;
  const essiv =
    spec.ivGenerator === 'essiv'
      ? create(
          createHash(nodeHashName(spec.ivHash ?? '') ?? '')
            .update(key)
            .digest(),
        )
      : undefined;
  const writeIv = (sector: number, iv: Uint8Array): void => {
    iv.fill(0);
    if (spec.ivGenerator === 'plain') {
      // dm-crypt's "plain" is the low 32 bits of the sector number.
      const low = sector % 2 ** 32;
      for (let i = 0; i < 4; i++) iv[i] = (low >>> (8 * i)) & 0xff;
      return;
    }
    writePlain64(sector, iv);
    essiv?.encryptBlock(iv, 0);
  };
  return new BlockModeSectors(spec.mode, cipher, writeIv, tweakCipher);
}
