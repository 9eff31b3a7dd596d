// A LUKS1 volume: unlock a keyslot with a passphrase (PBKDF2 -> decrypt key material -> AF merge ->
// check the master key digest), or make a new header with one keyslot, and the sector cipher of the
// payload. Used by qcow2's encrypt.format=luks and by the standalone luks format.
// Spec: "LUKS1 On-Disk Format Specification", sections 4.1 (create) and 4.2 (recover the master key).

import {
  pbkdf2 as pbkdf2Callback,
  pbkdf2Sync,
  randomBytes,
  randomUUID,
  timingSafeEqual,
} from '../lazy-crypto.ts';
import { InvalidOptionError, PermissionError } from '../errors.ts';
import { afMerge, afSplit } from './af-splitter.ts';
import {
  keyMaterialSectors,
  LUKS_DIGEST_BYTES,
  LUKS_KEY_MATERIAL_ALIGN_BYTES,
  LUKS_MAX_ITERATIONS,
  LUKS_PHDR_BYTES,
  LUKS_SALT_BYTES,
  LUKS_SECTOR_BYTES,
  LUKS_SLOT_COUNT,
  LUKS_STRIPES,
  type LuksHeader,
  serializeLuksHeader,
} from './luks-header.ts';
import {
  type CipherSpec,
  cipherKeySizes,
  hashBytes,
  nodeHashName,
  parseCipherSpec,
  SectorCipher,
} from './sector-cipher.ts';

// util from getBuiltinModule: an ESM import of node:util reads every export, which loads
// node:worker_threads into every start-up.
const pbkdf2 = process.getBuiltinModule('node:util').promisify(pbkdf2Callback);

/** qemu's floor for both iteration counts (QCRYPTO_BLOCK_LUKS_MIN_*_ITERS). */
const MIN_ITERATIONS = 1000;

/** Reads `lengthBytes` at `offsetBytes` from the start of the LUKS header area. */
export type LuksRegionReader = (offsetBytes: number, lengthBytes: number) => Promise<Buffer>;

export interface LuksUnlocked {
  header: LuksHeader;
  cipher: SectorCipher;
}

function derive(
  hash: string,
  secret: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  bytes: number,
): Promise<Buffer> {
  return pbkdf2(secret, salt, iterations, bytes, nodeHashName(hash) ?? hash);
}

/**
 * Finds the keyslot `passphrase` opens and returns the payload cipher. PBKDF2 runs on the thread pool, at
 * most LUKS_MAX_ITERATIONS per slot (parseLuksHeader enforced it). Throws PermissionError (qemu's "Invalid
 * password, cannot unlock any keyslot") when no active slot matches.
 */
export async function unlockLuks(
  header: LuksHeader,
  passphrase: Uint8Array,
  readRegion: LuksRegionReader,
  file: string,
): Promise<LuksUnlocked> {
  const spec = parseCipherSpec(header.cipherName, header.cipherMode, header.keyBytes);
  for (const slot of header.keyslots) {
    if (!slot.active) continue;
    const slotKey = await derive(header.hashSpec, passphrase, slot.salt, slot.iterations, header.keyBytes);
    const sectors = keyMaterialSectors(header.keyBytes, slot.stripes);
    const encrypted = await readRegion(
      slot.keyMaterialOffsetSectors * LUKS_SECTOR_BYTES,
      sectors * LUKS_SECTOR_BYTES,
    );
    const material = new SectorCipher(spec, slotKey).decrypt(encrypted, 0);
    const masterKey = afMerge(material, header.keyBytes, slot.stripes, header.hashSpec);
    const digest = await derive(
      header.hashSpec,
      masterKey,
      header.mkDigestSalt,
      header.mkDigestIterations,
      LUKS_DIGEST_BYTES,
    );
    if (timingSafeEqual(digest, header.mkDigest))
      return { header, cipher: new SectorCipher(spec, masterKey) };
  }
  throw new PermissionError({ file, message: 'Invalid password, cannot unlock any keyslot' });
}

/** qemu's luks create options (QCryptoBlockCreateOptionsLUKS), parsed. */
export interface LuksCreateSettings {
  cipherAlg: string;
  cipherMode: string;
  ivgenAlg: string;
  ivgenHashAlg: string;
  hashAlg: string;
  iterTimeMs: number;
}

/** Option names and defaults as qemu spells them (without qcow2's `encrypt.` prefix). */
export const LUKS_CREATE_DEFAULTS: Readonly<Record<string, string>> = {
  'cipher-alg': 'aes-256',
  'cipher-mode': 'xts',
  'ivgen-alg': 'plain64',
  'ivgen-hash-alg': 'sha256',
  'hash-alg': 'sha256',
  'iter-time': '2000',
};

/** cipher-alg values qemu-img 7.2 (nettle) creates LUKS volumes with, and its cipher-mode values. */
export const LUKS_CIPHER_ALGS: readonly string[] = [
  'aes-128',
  'aes-192',
  'aes-256',
  'twofish-128',
  'twofish-192',
  'twofish-256',
  'serpent-128',
  'serpent-192',
  'serpent-256',
  'cast5-128',
];
export const LUKS_CIPHER_MODES: readonly string[] = ['xts', 'cbc', 'ecb', 'ctr'];

/** qemu's names of a cipher family in its "No <Name> cipher with key size N" message. */
const FAMILY_TITLES: Readonly<Record<string, string>> = {
  aes: 'AES',
  twofish: 'Twofish',
  serpent: 'Serpent',
};

/**
 * Validates luks create options (`prefix` is "encrypt." for qcow2, "" for the luks format, for messages);
 * throws InvalidOptionError naming the option.
 */
export function parseLuksCreateSettings(
  options: Record<string, string | undefined>,
  prefix: string,
): LuksCreateSettings {
  const value = (name: string): string => options[name] ?? LUKS_CREATE_DEFAULTS[name] ?? '';
  const settings: LuksCreateSettings = {
    cipherAlg: value('cipher-alg'),
    cipherMode: value('cipher-mode'),
    ivgenAlg: value('ivgen-alg'),
    ivgenHashAlg: value('ivgen-hash-alg'),
    hashAlg: value('hash-alg'),
    iterTimeMs: Number(value('iter-time')),
  };
  const bad = (name: string, message: string): InvalidOptionError =>
    new InvalidOptionError({ option: `${prefix}${name}`, value: value(name), message });
  // qemu knows des and 3des as names but has no LUKS cipher for them.
  if (settings.cipherAlg === 'des' || settings.cipherAlg === '3des')
    throw bad('cipher-alg', `Algorithm '${settings.cipherAlg}' not supported`);
  if (!LUKS_CIPHER_ALGS.includes(settings.cipherAlg))
    throw bad(
      'cipher-alg',
      `Parameter '${prefix}cipher-alg' does not accept value '${settings.cipherAlg}' (${LUKS_CIPHER_ALGS.join(', ')})`,
    );
  if (!LUKS_CIPHER_MODES.includes(settings.cipherMode))
    throw bad(
      'cipher-mode',
      `Parameter '${prefix}cipher-mode' does not accept value '${settings.cipherMode}' (${LUKS_CIPHER_MODES.join(', ')})`,
    );
  if (!['plain', 'plain64', 'essiv'].includes(settings.ivgenAlg))
    throw bad(
      'ivgen-alg',
      `Parameter '${prefix}ivgen-alg' does not accept value '${settings.ivgenAlg}' (plain, plain64, essiv)`,
    );
  for (const name of ['hash-alg', 'ivgen-hash-alg'] as const) {
    if (!nodeHashName(value(name)))
      throw bad(name, `Parameter '${prefix}${name}' does not accept value '${value(name)}'`);
  }
  if (!Number.isSafeInteger(settings.iterTimeMs) || settings.iterTimeMs <= 0)
    throw bad('iter-time', `Parameter '${prefix}iter-time' expects a positive number of milliseconds`);
  const [family = '', bits = ''] = settings.cipherAlg.split('-');
  // XTS needs a 128-bit block; CAST-128's is 64 bits.
  if (settings.cipherMode === 'xts' && family === 'cast5')
    throw bad('cipher-mode', `Unsupported cipher mode ${settings.cipherMode}`);
  // A 192-bit key outside XTS makes 96000 bytes of key material, not whole sectors: qemu-img 7.2
  // aborts on an assertion creating or opening such a volume, so vdisk does not make one.
  if (bits === '192' && settings.cipherMode !== 'xts')
    throw bad(
      'cipher-alg',
      `${settings.cipherAlg} in ${settings.cipherMode} mode makes key material qemu-img cannot open (192-bit keys work in xts mode only)`,
    );
  if (settings.ivgenAlg === 'essiv') {
    // The ESSIV cipher is the same cipher keyed with the hash of the volume key.
    const essivKeyBytes = hashBytes(settings.ivgenHashAlg);
    if (!cipherKeySizes(family)?.includes(essivKeyBytes))
      throw bad(
        'ivgen-hash-alg',
        family === 'cast5'
          ? `Cipher ${settings.cipherAlg} not supported with essiv`
          : `No ${FAMILY_TITLES[family] ?? family} cipher with key size ${essivKeyBytes} available`,
      );
  }
  return settings;
}

/** The LUKS cipher spec `settings` ask for ("aes", "xts-plain64", 64-byte key). */
export function cipherSpecOf(settings: LuksCreateSettings): CipherSpec {
  const [family = '', bits = ''] = settings.cipherAlg.split('-');
  const cipherBytes = Number(bits) / 8;
  const keyBytes = settings.cipherMode === 'xts' ? cipherBytes * 2 : cipherBytes;
  const ivText = settings.ivgenAlg === 'essiv' ? `essiv:${settings.ivgenHashAlg}` : settings.ivgenAlg;
  // qemu names the IV generator even for ECB ("ecb-plain64"), and cannot open a bare "ecb".
  return parseCipherSpec(family, `${settings.cipherMode}-${ivText}`, keyBytes);
}

/** LUKS's cipher-mode text of `spec` ("xts-plain64", "cbc-essiv:sha256", "ecb-plain64"). */
function cipherModeText(spec: CipherSpec): string {
  const ivText = spec.ivGenerator === 'essiv' ? `essiv:${spec.ivHash}` : spec.ivGenerator;
  return ivText === 'none' ? spec.mode : `${spec.mode}-${ivText}`;
}

/** PBKDF2 iterations this CPU runs in `durationMs` (qemu's qcrypto_pbkdf2_count_iters, scaled). */
function iterationsFor(hash: string, durationMs: number): number {
  const probeIterations = 1 << 14;
  const salt = Buffer.alloc(LUKS_SALT_BYTES);
  let elapsedMs = 0;
  let iterations = probeIterations;
  // Time a probe long enough to be measurable; scale up until it takes at least 20 ms.
  for (;;) {
    const start = process.hrtime.bigint();
    pbkdf2Sync('vdisk', salt, iterations, 32, nodeHashName(hash) ?? hash);
    elapsedMs = Number(process.hrtime.bigint() - start) / 1e6;
    if (elapsedMs >= 20 || iterations >= LUKS_MAX_ITERATIONS) break;
    iterations *= 4;
  }
  const perMs = iterations / Math.max(elapsedMs, 0.001);
  return Math.min(LUKS_MAX_ITERATIONS, Math.max(MIN_ITERATIONS, Math.floor(perMs * durationMs)));
}

/** Where qemu's layout puts keyslot material and the payload for a `keyBytes` key (in 512-byte sectors). */
export function luksLayout(keyBytes: number): {
  firstSlotSector: number;
  slotSectors: number;
  payloadOffsetSectors: number;
} {
  const alignSectors = LUKS_KEY_MATERIAL_ALIGN_BYTES / LUKS_SECTOR_BYTES;
  const slotSectors = Math.ceil(keyMaterialSectors(keyBytes, LUKS_STRIPES) / alignSectors) * alignSectors;
  const firstSlotSector = Math.ceil(LUKS_PHDR_BYTES / LUKS_KEY_MATERIAL_ALIGN_BYTES) * alignSectors;
  return {
    firstSlotSector,
    slotSectors,
    payloadOffsetSectors: firstSlotSector + LUKS_SLOT_COUNT * slotSectors,
  };
}

export interface NewLuksVolume {
  header: LuksHeader;
  /** The phdr followed by the key material, payloadOffsetSectors * 512 bytes (zeros where no slot is). */
  headerAreaBytes: Buffer;
  cipher: SectorCipher;
}

/**
 * A new LUKS1 header with keyslot 0 opened by `passphrase`, laid out as qemu lays it out: key material
 * from 4 KiB, each of the 8 slots padded to 4 KiB, the payload right after the last slot.
 */
export async function createLuksVolume(
  settings: LuksCreateSettings,
  passphrase: Uint8Array,
): Promise<NewLuksVolume> {
  const spec = cipherSpecOf(settings);
  const masterKey = randomBytes(spec.keyBytes);
  const mkDigestSalt = randomBytes(LUKS_SALT_BYTES);
  const rate = iterationsFor(settings.hashAlg, settings.iterTimeMs);
  // qemu spends an eighth of iter-time on the digest and the whole of it on the keyslot.
  const mkDigestIterations = Math.max(MIN_ITERATIONS, Math.floor(rate / 8));
  const slotIterations = Math.max(MIN_ITERATIONS, rate);
  const mkDigest = await derive(
    settings.hashAlg,
    masterKey,
    mkDigestSalt,
    mkDigestIterations,
    LUKS_DIGEST_BYTES,
  );
  const { firstSlotSector, slotSectors, payloadOffsetSectors } = luksLayout(spec.keyBytes);
  const slotSalt = randomBytes(LUKS_SALT_BYTES);
  const header: LuksHeader = {
    cipherName: spec.cipherName,
    cipherMode: cipherModeText(spec),
    hashSpec: settings.hashAlg,
    payloadOffsetSectors,
    keyBytes: spec.keyBytes,
    mkDigest,
    mkDigestSalt,
    mkDigestIterations,
    uuid: randomUUID(),
    keyslots: Array.from({ length: LUKS_SLOT_COUNT }, (_, index) => ({
      active: index === 0,
      iterations: index === 0 ? slotIterations : 0,
      salt: index === 0 ? slotSalt : Buffer.alloc(LUKS_SALT_BYTES),
      keyMaterialOffsetSectors: firstSlotSector + index * slotSectors,
      stripes: LUKS_STRIPES,
    })),
  };
  const slotKey = await derive(settings.hashAlg, passphrase, slotSalt, slotIterations, spec.keyBytes);
  const split = afSplit(masterKey, LUKS_STRIPES, settings.hashAlg);
  const padded = Buffer.alloc(keyMaterialSectors(spec.keyBytes, LUKS_STRIPES) * LUKS_SECTOR_BYTES);
  split.copy(padded);
  const material = new SectorCipher(spec, slotKey).encrypt(padded, 0);
  const headerAreaBytes = Buffer.alloc(header.payloadOffsetSectors * LUKS_SECTOR_BYTES);
  serializeLuksHeader(header).copy(headerAreaBytes, 0);
  material.copy(headerAreaBytes, firstSlotSector * LUKS_SECTOR_BYTES);
  return { header, headerAreaBytes, cipher: new SectorCipher(spec, masterKey) };
}

/** qemu's QCryptoBlockInfoLUKS as `info` prints it (qemu's field names; `format` added by qcow2). */
export function luksInfo(header: LuksHeader): Record<string, unknown> {
  const spec = parseCipherSpec(header.cipherName, header.cipherMode, header.keyBytes);
  const cipherBits = (spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8;
  return {
    'cipher-alg': `${spec.cipherName}-${cipherBits}`,
    'cipher-mode': spec.mode,
    'ivgen-alg': spec.ivGenerator === 'none' ? undefined : spec.ivGenerator,
    'ivgen-hash-alg': spec.ivHash,
    'hash-alg': header.hashSpec,
    'payload-offset': header.payloadOffsetSectors * LUKS_SECTOR_BYTES,
    'master-key-iters': header.mkDigestIterations,
    uuid: header.uuid,
    slots: header.keyslots.map((slot) =>
      slot.active
        ? {
            active: true,
            iters: slot.iterations,
            'key-offset': slot.keyMaterialOffsetSectors * LUKS_SECTOR_BYTES,
            stripes: slot.stripes,
          }
        : { active: false, 'key-offset': slot.keyMaterialOffsetSectors * LUKS_SECTOR_BYTES },
    ),
  };
}
