// The standalone luks format (qemu's block/crypto.c "luks"): a LUKS1 header, key material, then the
// enciphered payload, guest size = file size - payload offset. Opened with `key-secret=ID`; without it
// `info` still works and data I/O fails, as with qemu's no-I/O opens. The folder's only export is `luksDriver`.

import type { BlockDevice } from '../../block-device.ts';
import { hasLuksMagic, LUKS_PHDR_BYTES, parseLuksHeader } from '../../crypto/luks-header.ts';
import {
  cipherSpecOf,
  createLuksVolume,
  luksLayout,
  LUKS_CIPHER_ALGS,
  LUKS_CIPHER_MODES,
  LUKS_CREATE_DEFAULTS,
  parseLuksCreateSettings,
  unlockLuks,
} from '../../crypto/luks-volume.ts';
import { CRYPT_SECTOR_BYTES } from '../../crypto/sector-cipher.ts';
import { lookupSecret } from '../../crypto/secrets.ts';
import { InvalidOptionError } from '../../errors.ts';
import type {
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  MeasureInput,
  MeasureResult,
  OpenContext,
} from '../driver.ts';
import { LuksDevice } from './device.ts';

const KEY_SECRET = 'key-secret';

const LUKS_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: KEY_SECRET, type: 'string', help: 'ID of the secret that provides the keyslot passphrase' },
  {
    name: 'cipher-alg',
    type: 'enum',
    values: LUKS_CIPHER_ALGS,
    default: LUKS_CREATE_DEFAULTS['cipher-alg'],
    help: 'Name of encryption cipher algorithm',
  },
  {
    name: 'cipher-mode',
    type: 'enum',
    values: LUKS_CIPHER_MODES,
    default: LUKS_CREATE_DEFAULTS['cipher-mode'],
    help: 'Name of encryption cipher mode',
  },
  {
    name: 'ivgen-alg',
    type: 'enum',
    values: ['plain', 'plain64', 'essiv'],
    default: LUKS_CREATE_DEFAULTS['ivgen-alg'],
    help: 'Name of IV generator algorithm',
  },
  {
    name: 'ivgen-hash-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['ivgen-hash-alg'],
    help: 'Name of IV generator hash algorithm',
  },
  {
    name: 'hash-alg',
    type: 'string',
    default: LUKS_CREATE_DEFAULTS['hash-alg'],
    help: 'Name of encryption hash algorithm',
  },
  { name: 'iter-time', type: 'number', default: 2000, help: 'Time to spend in PBKDF in milliseconds' },
];

async function openLuks(context: OpenContext): Promise<BlockDevice> {
  const { file, path } = context;
  const fileSizeBytes = await file.sizeBytes();
  const head = Buffer.alloc(Math.min(LUKS_PHDR_BYTES, fileSizeBytes));
  await file.read(0, head);
  const header = parseLuksHeader(head, path, 0, fileSizeBytes);
  const secretId = context.options[KEY_SECRET];
  if (secretId === undefined && !context.metadataOnly)
    throw new InvalidOptionError({
      option: KEY_SECRET,
      message: `${path}: Parameter '${KEY_SECRET}' is required for cipher`,
    });
  let cipher: Awaited<ReturnType<typeof unlockLuks>>['cipher'] | undefined;
  if (secretId !== undefined) {
    const readRegion = async (offsetBytes: number, lengthBytes: number): Promise<Buffer> => {
      const buffer = Buffer.alloc(lengthBytes);
      await file.read(offsetBytes, buffer);
      return buffer;
    };
    ({ cipher } = await unlockLuks(header, lookupSecret(secretId, KEY_SECRET), readRegion, path));
  }
  const payloadBytes = fileSizeBytes - header.payloadOffsetSectors * CRYPT_SECTOR_BYTES;
  const sizeBytes = Math.floor(Math.max(0, payloadBytes) / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES;
  return new LuksDevice({ file, path, header, cipher, sizeBytes, readOnly: context.readOnly });
}

/** qemu-img create -f luks: header and keyslot 0 written, the payload a sparse extension of the file. */
async function createLuks(context: CreateContext): Promise<void> {
  const known = new Set(LUKS_CREATE_OPTIONS.map((spec) => spec.name));
  for (const [name, value] of Object.entries(context.options)) {
    if (!known.has(name))
      throw new InvalidOptionError({ option: name, value, message: `Invalid parameter '${name}' for luks` });
  }
  const secretId = context.options[KEY_SECRET];
  if (secretId === undefined)
    throw new InvalidOptionError({
      option: KEY_SECRET,
      message: "Parameter 'key-secret' is required for cipher",
    });
  const settings = parseLuksCreateSettings(context.options, '');
  const volume = await createLuksVolume(settings, lookupSecret(secretId, KEY_SECRET));
  const sizeBytes = Math.ceil(context.sizeBytes / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES;
  const slot = volume.header.keyslots[0];
  const writtenEnd = slot
    ? slot.keyMaterialOffsetSectors * CRYPT_SECTOR_BYTES +
      Math.ceil((volume.header.keyBytes * slot.stripes) / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES
    : LUKS_PHDR_BYTES;
  await context.file.truncate(0);
  await context.file.write(0, volume.headerAreaBytes.subarray(0, writtenEnd));
  await context.file.truncate(volume.headerAreaBytes.length + sizeBytes);
  await context.file.sync();
}

/** qemu-img measure -O luks: the header area plus the whole payload, whatever the source holds. */
async function measureLuks(input: MeasureInput): Promise<MeasureResult> {
  const settings = parseLuksCreateSettings(
    Object.fromEntries(
      Object.entries(input.options).filter(([name]) => name !== 'size' && name !== KEY_SECRET),
    ),
    '',
  );
  const headerBytes = luksLayout(cipherSpecOf(settings).keyBytes).payloadOffsetSectors * CRYPT_SECTOR_BYTES;
  const sizeBytes = input.source ? input.source.sizeBytes : input.sizeBytes;
  const totalBytes = headerBytes + Math.ceil(sizeBytes / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES;
  return { requiredBytes: totalBytes, fullyAllocatedBytes: totalBytes };
}

export const luksDriver: FormatDriver = {
  name: 'luks',
  description: 'LUKS1 encrypted volume (qemu\'s "luks" driver): header, key material, enciphered payload',
  probe: (head) => (hasLuksMagic(head) ? 100 : 0),
  capabilities: {
    create: true,
    write: true,
    backing: false,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: ['luks'],
    resize: 'grow-shrink',
    // Writes (and the read-modify-write of partial sectors) hold the device's lock; reads are positional.
    concurrentWrites: true,
  },
  createOptions: LUKS_CREATE_OPTIONS,
  open: openLuks,
  create: createLuks,
  measure: measureLuks,
};
