// qcow2 encryption: crypt_method 2 (LUKS1 header in clusters named by the 0x0537be77 header extension,
// data sectors enciphered with the IV of their *host* offset) and crypt_method 1 (legacy AES, IV of the
// *guest* offset, read only). Opened with `encrypt.key-secret=ID`; without it metadata still opens
// (info, check, map) and data I/O fails. Spec: qcow2.txt "Full disk encryption header pointer".

import { InvalidOptionError, ImageFormatError, UnsupportedError } from '../../errors.ts';
import { legacyAesCipher } from '../../crypto/legacy-aes.ts';
import { LUKS_PHDR_BYTES, parseLuksHeader } from '../../crypto/luks-header.ts';
import {
  cipherSpecOf,
  createLuksVolume,
  luksLayout,
  LUKS_CREATE_DEFAULTS,
  luksInfo,
  parseLuksCreateSettings,
  unlockLuks,
} from '../../crypto/luks-volume.ts';
import { CRYPT_SECTOR_BYTES, type SectorCipher } from '../../crypto/sector-cipher.ts';
import { lookupSecret } from '../../crypto/secrets.ts';
import type { HostFile } from '../../io/host-file.ts';
import type { CreateOptionSpec } from '../driver.ts';
import { EXT_CRYPTO_HEADER, EXT_FEATURE_TABLE, type Qcow2Header, serializeHeader } from './header.ts';
import { loadImage } from './load.ts';

export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;
const KEY_SECRET = 'encrypt.key-secret';

/** The data cipher of an open encrypted image. */
export interface Qcow2Encryption {
  /** qemu's `encrypt` member of format-specific info. */
  readonly info: Record<string, unknown>;
  /** Plaintext of whole sectors read at `hostOffsetBytes` for guest `guestOffsetBytes`. */
  decrypt(data: Uint8Array, hostOffsetBytes: number, guestOffsetBytes: number): Buffer;
  /** Ciphertext to store at `hostOffsetBytes` for guest `guestOffsetBytes`; `data` is untouched. */
  encrypt(data: Uint8Array, hostOffsetBytes: number, guestOffsetBytes: number): Buffer;
  /** Throws before any allocation when writes cannot be enciphered (no key, or legacy AES). */
  assertWritable(): void;
}

/** The LUKS header area the crypto extension names (offset, length), or undefined. */
export function cryptoHeaderRange(
  header: Qcow2Header,
): { offsetBytes: number; lengthBytes: number } | undefined {
  const extension = header.extensions.find((candidate) => candidate.type === EXT_CRYPTO_HEADER);
  if (!extension || extension.data.length < 16) return undefined;
  const offset = extension.data.readBigUInt64BE(0);
  const length = extension.data.readBigUInt64BE(8);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER) || length > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return { offsetBytes: Number(offset), lengthBytes: Number(length) };
}

function missingKey(path: string): InvalidOptionError {
  return new InvalidOptionError({
    option: KEY_SECRET,
    message: `${path}: Parameter '${KEY_SECRET}' is required for cipher`,
  });
}

class SectorEncryption implements Qcow2Encryption {
  readonly info: Record<string, unknown>;
  private readonly cipher: SectorCipher | undefined;
  private readonly useHostOffset: boolean;
  private readonly path: string;

  constructor(
    info: Record<string, unknown>,
    cipher: SectorCipher | undefined,
    useHostOffset: boolean,
    path: string,
  ) {
    this.info = info;
    this.cipher = cipher;
    this.useHostOffset = useHostOffset;
    this.path = path;
  }

  private sector(hostOffsetBytes: number, guestOffsetBytes: number): number {
    return (this.useHostOffset ? hostOffsetBytes : guestOffsetBytes) / CRYPT_SECTOR_BYTES;
  }

  decrypt(data: Uint8Array, hostOffsetBytes: number, guestOffsetBytes: number): Buffer {
    if (!this.cipher) throw missingKey(this.path);
    return this.cipher.decrypt(data, this.sector(hostOffsetBytes, guestOffsetBytes));
  }

  encrypt(data: Uint8Array, hostOffsetBytes: number, guestOffsetBytes: number): Buffer {
    this.assertWritable();
    return (this.cipher as SectorCipher).encrypt(data, this.sector(hostOffsetBytes, guestOffsetBytes));
  }

  assertWritable(): void {
    if (!this.cipher) throw missingKey(this.path);
    if (!this.useHostOffset)
      throw new UnsupportedError({
        format: 'qcow2',
        feature: 'writing legacy AES encryption',
        message: `${this.path}: writing legacy AES-encrypted qcow2 images is not supported (convert to encrypt.format=luks)`,
      });
  }
}

/**
 * The encryption of a just-loaded image, or undefined for crypt_method 0. `options` are the open's
 * driver options (`encrypt.key-secret`; without it only a `metadataOnly` open succeeds). Throws ImageFormatError for a bad crypto extension or LUKS
 * header, PermissionError for a wrong passphrase, UnsupportedError for an unknown crypt_method.
 */
export async function openQcow2Encryption(
  header: Qcow2Header,
  file: HostFile,
  path: string,
  options: Record<string, string>,
  metadataOnly = false,
): Promise<Qcow2Encryption | undefined> {
  if (header.cryptMethod === CRYPT_NONE) return undefined;
  const secretId = options[KEY_SECRET];
  if (secretId === undefined && !metadataOnly) throw missingKey(path);
  const secret = secretId === undefined ? undefined : lookupSecret(secretId, KEY_SECRET);
  if (header.cryptMethod === CRYPT_AES) {
    return new SectorEncryption({ format: 'aes' }, secret && legacyAesCipher(secret), false, path);
  }
  if (header.cryptMethod !== CRYPT_LUKS)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: `crypt_method ${header.cryptMethod}`,
      message: `${path}: unknown qcow2 crypt_method ${header.cryptMethod}`,
    });
  const range = cryptoHeaderRange(header);
  const clusterSizeBytes = 2 ** header.clusterBits;
  const fileSizeBytes = await file.sizeBytes();
  if (!range)
    throw new ImageFormatError({
      file: path,
      offsetBytes: 32,
      message: 'crypt_method 2 (LUKS) without a crypto header extension',
    });
  if (
    range.offsetBytes % clusterSizeBytes !== 0 ||
    range.offsetBytes === 0 ||
    range.lengthBytes < LUKS_PHDR_BYTES ||
    range.offsetBytes + range.lengthBytes > fileSizeBytes
  ) {
    throw new ImageFormatError({
      file: path,
      message: `crypto header extension (offset ${range.offsetBytes}, length ${range.lengthBytes}) does not name a LUKS header inside the file`,
    });
  }
  const head = Buffer.alloc(LUKS_PHDR_BYTES);
  await file.read(range.offsetBytes, head);
  const luks = parseLuksHeader(head, path, range.offsetBytes, range.lengthBytes);
  const info = { format: 'luks', ...luksInfo(luks) };
  if (!secret) return new SectorEncryption(info, undefined, true, path);
  const readRegion = async (offsetBytes: number, lengthBytes: number): Promise<Buffer> => {
    const buffer = Buffer.alloc(lengthBytes);
    await file.read(range.offsetBytes + offsetBytes, buffer);
    return buffer;
  };
  const { cipher } = await unlockLuks(luks, secret, readRegion, path);
  return new SectorEncryption(info, cipher, true, path);
}

/** The `-o` options qcow2 create takes for encryption, with qemu's names and help. */
export const QCOW2_ENCRYPT_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  {
    name: 'encrypt.cipher-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['cipher-alg'],
    help: 'Name of encryption cipher algorithm',
  },
  {
    name: 'encrypt.cipher-mode',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['cipher-mode'],
    help: 'Name of encryption cipher mode',
  },
  {
    name: 'encrypt.format',
    type: 'enum',
    values: ['luks'],
    help: "Encrypt the image, format choices: 'luks' ('aes' can only be read)",
  },
  {
    name: 'encrypt.hash-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['hash-alg'],
    help: 'Name of encryption hash algorithm',
  },
  {
    name: 'encrypt.iter-time',
    type: 'number',
    default: 2000,
    help: 'Time to spend in PBKDF in milliseconds',
  },
  {
    name: 'encrypt.ivgen-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['ivgen-alg'],
    help: 'Name of IV generator algorithm',
  },
  {
    name: 'encrypt.ivgen-hash-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['ivgen-hash-alg'],
    help: 'Name of IV generator hash algorithm',
  },
  { name: KEY_SECRET, type: 'string', help: 'ID of secret providing the LUKS passphrase' },
  {
    name: 'encryption',
    type: 'bool',
    help: "Encrypt the image with format 'aes' (deprecated; refused: aes can only be read)",
  },
];
const QCOW2_ENCRYPT_OPTION_NAMES = QCOW2_ENCRYPT_CREATE_OPTIONS.map((spec) => spec.name);

/**
 * Takes the encrypt.* options out of `options` (mutating it) and returns them, or undefined when the
 * image is not to be encrypted. Throws InvalidOptionError for combinations qemu refuses.
 */
export function takeEncryptOptions(options: Record<string, string>): Record<string, string> | undefined {
  const taken: Record<string, string> = {};
  for (const name of QCOW2_ENCRYPT_OPTION_NAMES) {
    const value = options[name];
    if (value === undefined) continue;
    taken[name] = value;
    delete options[name];
  }
  if (Object.keys(taken).length === 0) return undefined;
  const format = taken['encrypt.format'] ?? (taken.encryption === 'on' ? 'aes' : undefined);
  if (format === 'aes')
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'creating legacy AES encryption',
      message: "qcow2 with legacy AES encryption can only be read; use 'encrypt.format=luks'",
    });
  if (format !== 'luks')
    throw new InvalidOptionError({
      option: 'encrypt.format',
      value: format,
      message: "Parameter 'encrypt.format' must be 'luks' when encrypt.* options are given",
    });
  return taken;
}

/** Bytes of clusters the LUKS header of `encryptOptions` takes in an image (qemu-img measure adds them). */
export function luksHeaderClusterBytes(
  encryptOptions: Record<string, string>,
  clusterSizeBytes: number,
): number {
  const settings = parseLuksCreateSettings(luksOptionsOf(encryptOptions), 'encrypt.');
  const areaBytes = luksLayout(cipherSpecOf(settings).keyBytes).payloadOffsetSectors * CRYPT_SECTOR_BYTES;
  return Math.ceil(areaBytes / clusterSizeBytes) * clusterSizeBytes;
}

function luksOptionsOf(encryptOptions: Record<string, string>): Record<string, string> {
  const luksOptions: Record<string, string> = {};
  for (const [name, value] of Object.entries(encryptOptions))
    if (name.startsWith('encrypt.')) luksOptions[name.slice('encrypt.'.length)] = value;
  return luksOptions;
}

/**
 * Adds a LUKS header to a freshly written, unencrypted, empty image: allocates its clusters after the L1
 * table (as qemu does), writes it, then points the header at it with crypt_method 2. Throws
 * InvalidOptionError for a missing key or bad encrypt.* values.
 */
export async function setUpQcow2Luks(
  context: { file: HostFile; path: string },
  encryptOptions: Record<string, string>,
): Promise<void> {
  const secretId = encryptOptions[KEY_SECRET];
  if (secretId === undefined)
    throw new InvalidOptionError({
      option: KEY_SECRET,
      message: `Parameter '${KEY_SECRET}' is required for cipher`,
    });
  const secret = lookupSecret(secretId, KEY_SECRET);
  const settings = parseLuksCreateSettings(luksOptionsOf(encryptOptions), 'encrypt.');
  const volume = await createLuksVolume(settings, secret);
  const { file, path } = context;
  const image = await loadImage({ file, path, readOnly: false }, async () => undefined);
  const clusterSizeBytes = image.clusterSizeBytes;
  const areaBytes = volume.headerAreaBytes.length;
  const clusterCount = Math.ceil(areaBytes / clusterSizeBytes);
  const firstCluster = await image.refcounts.allocateClusters(clusterCount);
  await image.refcounts.flush();
  const offsetBytes = firstCluster * clusterSizeBytes;
  const padded = Buffer.alloc(clusterCount * clusterSizeBytes);
  volume.headerAreaBytes.copy(padded);
  await file.write(offsetBytes, padded);
  await file.sync();
  const pointer = Buffer.alloc(16);
  pointer.writeBigUInt64BE(BigInt(offsetBytes), 0);
  pointer.writeBigUInt64BE(BigInt(areaBytes), 8);
  const header = image.header;
  // qemu writes the crypto pointer before the feature-name table (after a backing format).
  const tableAt = header.extensions.findIndex((extension) => extension.type === EXT_FEATURE_TABLE);
  header.extensions.splice(tableAt < 0 ? header.extensions.length : tableAt, 0, {
    type: EXT_CRYPTO_HEADER,
    data: pointer,
  });
  header.cryptMethod = CRYPT_LUKS;
  await file.write(0, serializeHeader(header, path));
  await file.sync();
}
