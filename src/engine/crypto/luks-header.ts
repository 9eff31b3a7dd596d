// The LUKS1 partition header (phdr): Buffer <-> typed record, pure, no I/O. Every field is checked
// before anything is sized from it, so a hostile header costs bounded memory and time.
// Spec: "LUKS1 On-Disk Format Specification" (cryptsetup), section 2 "PHDR"; the keyslot checks are
// qemu 7.2's (crypto/block-luks.c: 4000 stripes, no overlaps, nothing past the payload).

import { ImageFormatError, UnsupportedError } from '../errors.ts';
import { nodeHashName, parseCipherSpec } from './sector-cipher.ts';

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
export const LUKS_VERSION = 1;
export const LUKS_PHDR_BYTES = 592;
export const LUKS_SECTOR_BYTES = 512;
export const LUKS_SLOT_COUNT = 8;
export const LUKS_DIGEST_BYTES = 20;
export const LUKS_SALT_BYTES = 32;
/** qemu requires exactly this many AF stripes per keyslot (and cryptsetup always writes it). */
export const LUKS_STRIPES = 4000;
export const LUKS_SLOT_ENABLED = 0x00ac71f3;
export const LUKS_SLOT_DISABLED = 0x0000dead;
/** First keyslot material sits at 4 KiB, and each one is padded to 4 KiB (qemu and cryptsetup). */
export const LUKS_KEY_MATERIAL_ALIGN_BYTES = 4096;
/**
 * PBKDF2 iterations vdisk runs for one keyslot or digest, at most. qemu caps nothing, so a crafted header
 * asking for 2^32 iterations would keep it busy for about an hour per keyslot. qemu's default iter-time of
 * 2 s gives 1-4 million on current CPUs; 32 Mi leaves ample headroom yet stays under a minute or so.
 */
export const LUKS_MAX_ITERATIONS = 32 * 1024 * 1024;
/** Largest key LUKS1 ciphers use (aes-256-xts: two 32-byte halves). */
export const LUKS_MAX_KEY_BYTES = 64;

const FIELD = {
  version: 6,
  cipherName: 8,
  cipherMode: 40,
  hashSpec: 72,
  payloadOffset: 104,
  keyBytes: 108,
  mkDigest: 112,
  mkDigestSalt: 132,
  mkDigestIterations: 164,
  uuid: 168,
  keyslots: 208,
} as const;
const SLOT_BYTES = 48;

export interface LuksKeyslot {
  active: boolean;
  iterations: number;
  salt: Buffer;
  keyMaterialOffsetSectors: number;
  stripes: number;
}

export interface LuksHeader {
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffsetSectors: number;
  keyBytes: number;
  mkDigest: Buffer;
  mkDigestSalt: Buffer;
  mkDigestIterations: number;
  uuid: string;
  keyslots: LuksKeyslot[];
}

/** True when `head` starts with the LUKS magic and version 1. */
export function hasLuksMagic(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  for (let i = 0; i < LUKS_MAGIC.length; i++) if (head[i] !== LUKS_MAGIC[i]) return false;
  return true;
}

/** Sectors one keyslot's split key occupies (keyBytes * stripes bytes, rounded up to sectors). */
export function keyMaterialSectors(keyBytes: number, stripes: number): number {
  return Math.ceil((keyBytes * stripes) / LUKS_SECTOR_BYTES);
}

function readString(buffer: Buffer, offsetBytes: number, lengthBytes: number): string {
  const raw = buffer.subarray(offsetBytes, offsetBytes + lengthBytes);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? lengthBytes : end).toString('latin1');
}

/**
 * Parses and validates a LUKS1 header at `baseOffsetBytes` of `file` (for messages). `regionBytes` is how
 * many bytes the header area may span (the qcow2 crypto extension's length, or the luks file's size): the
 * key material must lie inside it. Throws ImageFormatError naming the field's offset, UnsupportedError
 * for a cipher or hash vdisk has no implementation of.
 */
export function parseLuksHeader(
  head: Uint8Array,
  file: string,
  baseOffsetBytes: number,
  regionBytes: number,
): LuksHeader {
  const buffer = Buffer.from(head.buffer, head.byteOffset, head.length);
  const fail = (field: number, message: string): ImageFormatError =>
    new ImageFormatError({ file, offsetBytes: baseOffsetBytes + field, message: `LUKS header: ${message}` });
  if (buffer.length < LUKS_PHDR_BYTES)
    throw fail(0, `truncated: ${buffer.length} of ${LUKS_PHDR_BYTES} bytes`);
  if (!hasLuksMagic(buffer)) throw fail(0, 'bad magic (expected "LUKS\\xba\\xbe")');
  const version = buffer.readUInt16BE(FIELD.version);
  if (version !== LUKS_VERSION) throw fail(FIELD.version, `unsupported version ${version} (only LUKS1)`);
  const header: LuksHeader = {
    cipherName: readString(buffer, FIELD.cipherName, 32),
    cipherMode: readString(buffer, FIELD.cipherMode, 32),
    hashSpec: readString(buffer, FIELD.hashSpec, 32),
    payloadOffsetSectors: buffer.readUInt32BE(FIELD.payloadOffset),
    keyBytes: buffer.readUInt32BE(FIELD.keyBytes),
    mkDigest: Buffer.from(buffer.subarray(FIELD.mkDigest, FIELD.mkDigest + LUKS_DIGEST_BYTES)),
    mkDigestSalt: Buffer.from(buffer.subarray(FIELD.mkDigestSalt, FIELD.mkDigestSalt + LUKS_SALT_BYTES)),
    mkDigestIterations: buffer.readUInt32BE(FIELD.mkDigestIterations),
    uuid: readString(buffer, FIELD.uuid, 40),
    keyslots: [],
  };
  if (header.keyBytes === 0 || header.keyBytes > LUKS_MAX_KEY_BYTES)
    throw fail(FIELD.keyBytes, `key size ${header.keyBytes} bytes outside 1..${LUKS_MAX_KEY_BYTES}`);
  if (!nodeHashName(header.hashSpec))
    throw new UnsupportedError({
      format: 'luks',
      feature: `hash ${header.hashSpec}`,
      message: `${file}: unsupported LUKS hash '${header.hashSpec}'`,
    });
  parseCipherSpec(header.cipherName, header.cipherMode, header.keyBytes);
  if (header.mkDigestIterations === 0 || header.mkDigestIterations > LUKS_MAX_ITERATIONS)
    throw fail(
      FIELD.mkDigestIterations,
      `master key digest iterations ${header.mkDigestIterations} outside 1..${LUKS_MAX_ITERATIONS}`,
    );
  const payloadBytes = header.payloadOffsetSectors * LUKS_SECTOR_BYTES;
  if (payloadBytes > regionBytes)
    throw fail(
      FIELD.payloadOffset,
      `payload offset ${payloadBytes} bytes lies past the ${regionBytes} bytes the header area holds`,
    );
  const firstMaterialSector = Math.ceil(LUKS_PHDR_BYTES / LUKS_SECTOR_BYTES);
  for (let index = 0; index < LUKS_SLOT_COUNT; index++) {
    const at = FIELD.keyslots + index * SLOT_BYTES;
    const state = buffer.readUInt32BE(at);
    const slot: LuksKeyslot = {
      active: state === LUKS_SLOT_ENABLED,
      iterations: buffer.readUInt32BE(at + 4),
      salt: Buffer.from(buffer.subarray(at + 8, at + 8 + LUKS_SALT_BYTES)),
      keyMaterialOffsetSectors: buffer.readUInt32BE(at + 40),
      stripes: buffer.readUInt32BE(at + 44),
    };
    if (state !== LUKS_SLOT_ENABLED && state !== LUKS_SLOT_DISABLED)
      throw fail(at, `keyslot ${index} state 0x${state.toString(16)} is neither enabled nor disabled`);
    if (slot.stripes !== LUKS_STRIPES)
      throw fail(at + 44, `keyslot ${index} has ${slot.stripes} stripes (expected ${LUKS_STRIPES})`);
    if (slot.active && (slot.iterations === 0 || slot.iterations > LUKS_MAX_ITERATIONS))
      throw fail(at + 4, `keyslot ${index} iterations ${slot.iterations} outside 1..${LUKS_MAX_ITERATIONS}`);
    const start = slot.keyMaterialOffsetSectors;
    const end = start + keyMaterialSectors(header.keyBytes, slot.stripes);
    if (start < firstMaterialSector)
      throw fail(at + 40, `keyslot ${index} key material at sector ${start} overlaps the header`);
    if (end > header.payloadOffsetSectors)
      throw fail(
        at + 40,
        `keyslot ${index} key material (sectors ${start}..${end}) overlaps the payload at sector ${header.payloadOffsetSectors}`,
      );
    for (const [otherIndex, other] of header.keyslots.entries()) {
      const otherEnd = other.keyMaterialOffsetSectors + keyMaterialSectors(header.keyBytes, other.stripes);
      if (start < otherEnd && other.keyMaterialOffsetSectors < end)
        throw fail(at + 40, `keyslots ${otherIndex} and ${index} overlap`);
    }
    header.keyslots.push(slot);
  }
  return header;
}

function writeString(buffer: Buffer, offsetBytes: number, lengthBytes: number, text: string): void {
  buffer.write(text.slice(0, lengthBytes - 1), offsetBytes, 'latin1');
}

/** Serializes `header` into a 592-byte phdr. */
export function serializeLuksHeader(header: LuksHeader): Buffer {
  const buffer = Buffer.alloc(LUKS_PHDR_BYTES);
  LUKS_MAGIC.copy(buffer, 0);
  buffer.writeUInt16BE(LUKS_VERSION, FIELD.version);
  writeString(buffer, FIELD.cipherName, 32, header.cipherName);
  writeString(buffer, FIELD.cipherMode, 32, header.cipherMode);
  writeString(buffer, FIELD.hashSpec, 32, header.hashSpec);
  buffer.writeUInt32BE(header.payloadOffsetSectors, FIELD.payloadOffset);
  buffer.writeUInt32BE(header.keyBytes, FIELD.keyBytes);
  header.mkDigest.copy(buffer, FIELD.mkDigest, 0, LUKS_DIGEST_BYTES);
  header.mkDigestSalt.copy(buffer, FIELD.mkDigestSalt, 0, LUKS_SALT_BYTES);
  buffer.writeUInt32BE(header.mkDigestIterations, FIELD.mkDigestIterations);
  writeString(buffer, FIELD.uuid, 40, header.uuid);
  header.keyslots.forEach((slot, index) => {
    const at = FIELD.keyslots + index * SLOT_BYTES;
    buffer.writeUInt32BE(slot.active ? LUKS_SLOT_ENABLED : LUKS_SLOT_DISABLED, at);
    buffer.writeUInt32BE(slot.iterations, at + 4);
    slot.salt.copy(buffer, at + 8, 0, LUKS_SALT_BYTES);
    buffer.writeUInt32BE(slot.keyMaterialOffsetSectors, at + 40);
    buffer.writeUInt32BE(slot.stripes, at + 44);
  });
  return buffer;
}
