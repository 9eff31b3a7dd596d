// GUID Partition Tables (UEFI 2.10 section 5.3): protective MBR, primary header at LBA 1 with its
// entry array, backup entry array and header at the disk's end; header CRC32 and entry-array CRC32
// checked on read and computed on write. A bad primary falls back to the backup, with a warning.

import { crc32 } from 'node:zlib';
import { CorruptImageError, InvalidOptionError } from '../errors.ts';
import { decodeGuid, encodeGuid } from './guid.ts';
import {
  encodeMbrSlot,
  MBR_BOOT_CODE_BYTES,
  MBR_GPT_PROTECTIVE_TYPE,
  MBR_MAX_SECTORS,
  MBR_SIGNATURE_OFFSET,
} from './mbr.ts';
import { gptTypeName } from './type-names.ts';
import {
  type PartitionEntry,
  type PartitionIo,
  type PartitionTable,
  readSectors,
  SECTOR_BYTES,
} from './types.ts';

export const GPT_SIGNATURE = 'EFI PART';
export const GPT_REVISION = 0x00010000;
export const GPT_HEADER_BYTES = 92;
export const GPT_ENTRY_BYTES = 128;
/** Entries written by vdisk (the spec's minimum array of 16 KiB; what fdisk and sgdisk write). */
export const GPT_DEFAULT_ENTRY_COUNT = 128;
/** Largest entry array read (bounds the allocation a header can ask for). */
export const GPT_MAX_ENTRY_ARRAY_BYTES = 4 * 1024 * 1024;
/** Partition names are 36 UTF-16 code units. */
export const GPT_NAME_UNITS = 36;

export interface GptHeader {
  headerSizeBytes: number;
  myLba: number;
  alternateLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySizeBytes: number;
  entriesCrc32: number;
}

function readU64(view: Buffer, at: number, file: string, baseBytes: number): number {
  const value = view.readBigUInt64LE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CorruptImageError({
      file,
      offsetBytes: baseBytes + at,
      lengthBytes: 8,
      message: `GPT field ${value} exceeds 2^53`,
    });
  }
  return Number(value);
}

/** CRC32 of a header with its CRC field (bytes 16..19) taken as zero, as the spec defines it. */
export function gptHeaderCrc(header: Uint8Array, headerSizeBytes: number): number {
  const copy = Buffer.from(header.subarray(0, headerSizeBytes));
  copy.writeUInt32LE(0, 16);
  return crc32(copy);
}

/**
 * Parses and validates a header sector read at `expectedLba`; returns the reason it is unusable as a
 * string (so the caller can try the backup), or the header. Never allocates from header fields.
 */
export function parseGptHeader(
  sector: Buffer,
  expectedLba: number,
  diskSectors: number,
  file: string,
): GptHeader | string {
  const base = expectedLba * SECTOR_BYTES;
  if (sector.toString('latin1', 0, 8) !== GPT_SIGNATURE) return `no GPT signature at LBA ${expectedLba}`;
  const headerSizeBytes = sector.readUInt32LE(12);
  if (headerSizeBytes < GPT_HEADER_BYTES || headerSizeBytes > SECTOR_BYTES)
    return `header size ${headerSizeBytes} out of range`;
  if (gptHeaderCrc(sector, headerSizeBytes) !== sector.readUInt32LE(16))
    return `header CRC32 mismatch at LBA ${expectedLba}`;
  const header: GptHeader = {
    headerSizeBytes,
    myLba: readU64(sector, 24, file, base),
    alternateLba: readU64(sector, 32, file, base),
    firstUsableLba: readU64(sector, 40, file, base),
    lastUsableLba: readU64(sector, 48, file, base),
    diskGuid: decodeGuid(sector.subarray(56, 72)),
    entriesLba: readU64(sector, 72, file, base),
    entryCount: sector.readUInt32LE(80),
    entrySizeBytes: sector.readUInt32LE(84),
    entriesCrc32: sector.readUInt32LE(88),
  };
  if (header.myLba !== expectedLba) return `header at LBA ${expectedLba} says it is at LBA ${header.myLba}`;
  if (
    header.entrySizeBytes < GPT_ENTRY_BYTES ||
    header.entrySizeBytes % 8 !== 0 ||
    header.entrySizeBytes > 4096
  ) {
    return `entry size ${header.entrySizeBytes} out of range`;
  }
  const arrayBytes = header.entryCount * header.entrySizeBytes;
  if (arrayBytes > GPT_MAX_ENTRY_ARRAY_BYTES)
    return `entry array of ${arrayBytes} bytes exceeds ${GPT_MAX_ENTRY_ARRAY_BYTES}`;
  const arraySectors = Math.ceil(arrayBytes / SECTOR_BYTES);
  if (header.entriesLba < 2 || header.entriesLba + arraySectors > diskSectors)
    return `entry array at LBA ${header.entriesLba} lies outside the disk`;
  if (header.firstUsableLba > header.lastUsableLba + 1 || header.lastUsableLba >= diskSectors) {
    return `usable range ${header.firstUsableLba}..${header.lastUsableLba} lies outside the disk (${diskSectors} sectors)`;
  }
  return header;
}

async function readEntries(
  io: PartitionIo,
  header: GptHeader,
  file: string,
): Promise<PartitionEntry[] | string> {
  const arrayBytes = header.entryCount * header.entrySizeBytes;
  const array = await readSectors(io, header.entriesLba, Math.ceil(arrayBytes / SECTOR_BYTES));
  if (crc32(array.subarray(0, arrayBytes)) !== header.entriesCrc32)
    return `entry array CRC32 mismatch at LBA ${header.entriesLba}`;
  const partitions: PartitionEntry[] = [];
  for (let index = 0; index < header.entryCount; index++) {
    const at = index * header.entrySizeBytes;
    const raw = array.subarray(at, at + GPT_ENTRY_BYTES);
    if (raw.subarray(0, 16).every((byte) => byte === 0)) continue;
    const base = header.entriesLba * SECTOR_BYTES + at;
    const firstLba = readU64(raw, 32, file, base);
    const lastLba = readU64(raw, 40, file, base);
    if (lastLba < firstLba) {
      throw new CorruptImageError({
        file,
        offsetBytes: base,
        lengthBytes: GPT_ENTRY_BYTES,
        message: `GPT entry ${index + 1} ends (LBA ${lastLba}) before it starts (LBA ${firstLba})`,
      });
    }
    const type = decodeGuid(raw.subarray(0, 16));
    const typeName = gptTypeName(type);
    const nameUnits = raw.subarray(56, 128);
    let nameEnd = 0;
    while (nameEnd < nameUnits.length && (nameUnits[nameEnd] !== 0 || nameUnits[nameEnd + 1] !== 0))
      nameEnd += 2;
    const sectorCount = lastLba - firstLba + 1;
    partitions.push({
      number: index + 1,
      kind: 'gpt',
      startSector: firstLba,
      sectorCount,
      startBytes: firstLba * SECTOR_BYTES,
      sizeBytes: sectorCount * SECTOR_BYTES,
      type,
      ...(typeName ? { typeName } : {}),
      name: nameUnits.toString('utf16le', 0, nameEnd),
      uuid: decodeGuid(raw.subarray(16, 32)),
      attributes: raw.readBigUInt64LE(48).toString(),
    });
  }
  return partitions;
}

/**
 * Reads a GPT: the primary header and array, else the backup (at the primary's alternate LBA or the
 * last sector), noting in `warnings` which copy failed and why. Undefined when neither copy has a GPT
 * signature; CorruptImageError when a signature is present but no copy validates.
 */
export async function readGpt(io: PartitionIo, file: string): Promise<PartitionTable | undefined> {
  const diskSectors = Math.floor(io.sizeBytes / SECTOR_BYTES);
  if (diskSectors < 3) return undefined;
  const warnings: string[] = [];
  const problems: string[] = [];
  const candidates = [1, diskSectors - 1];
  let signatureSeen = false;
  for (const lba of candidates) {
    const sector = await readSectors(io, lba, 1);
    if (sector.toString('latin1', 0, 8) === GPT_SIGNATURE) signatureSeen = true;
    const header = parseGptHeader(sector, lba, diskSectors, file);
    const partitions = typeof header === 'string' ? header : await readEntries(io, header, file);
    if (typeof header === 'string' || typeof partitions === 'string') {
      problems.push(typeof header === 'string' ? header : (partitions as string));
      continue;
    }
    if (lba !== 1)
      warnings.push(`primary GPT unusable (${problems.join('; ')}); read the backup at LBA ${lba}`);
    else {
      const backup = parseGptHeader(
        await readSectors(io, header.alternateLba < diskSectors ? header.alternateLba : diskSectors - 1, 1),
        header.alternateLba,
        diskSectors,
        file,
      );
      if (typeof backup === 'string') warnings.push(`backup GPT header: ${backup}`);
    }
    for (const partition of partitions) {
      if (
        partition.startSector < header.firstUsableLba ||
        partition.startSector + partition.sectorCount - 1 > header.lastUsableLba
      ) {
        warnings.push(
          `partition ${partition.number} lies outside the usable range ${header.firstUsableLba}..${header.lastUsableLba}`,
        );
      }
    }
    return {
      table: 'gpt',
      sectorSizeBytes: SECTOR_BYTES,
      diskId: header.diskGuid,
      partitions,
      firstUsableSector: header.firstUsableLba,
      lastUsableSector: header.lastUsableLba,
      warnings,
    };
  }
  if (!signatureSeen) return undefined;
  throw new CorruptImageError({
    file,
    offsetBytes: SECTOR_BYTES,
    lengthBytes: SECTOR_BYTES,
    message: `no valid GPT copy: ${problems.join('; ')}`,
  });
}

export interface GptPartitionSpec {
  typeGuid: string;
  uuid: string;
  firstLba: number;
  /** Inclusive. */
  lastLba: number;
  name?: string;
  attributes?: bigint;
}

/** Where a GPT with the default 128-entry array sits on a disk of `diskSectors`. */
export function gptGeometry(diskSectors: number): {
  entrySectors: number;
  firstUsableLba: number;
  lastUsableLba: number;
  backupEntriesLba: number;
  backupHeaderLba: number;
} {
  const entrySectors = Math.ceil((GPT_DEFAULT_ENTRY_COUNT * GPT_ENTRY_BYTES) / SECTOR_BYTES);
  const backupHeaderLba = diskSectors - 1;
  return {
    entrySectors,
    firstUsableLba: 2 + entrySectors,
    lastUsableLba: backupHeaderLba - entrySectors - 1,
    backupEntriesLba: backupHeaderLba - entrySectors,
    backupHeaderLba,
  };
}

function encodeHeader(args: {
  myLba: number;
  alternateLba: number;
  entriesLba: number;
  diskGuid: string;
  entriesCrc: number;
  geometry: ReturnType<typeof gptGeometry>;
}): Buffer {
  const sector = Buffer.alloc(SECTOR_BYTES);
  sector.write(GPT_SIGNATURE, 0, 'latin1');
  sector.writeUInt32LE(GPT_REVISION, 8);
  sector.writeUInt32LE(GPT_HEADER_BYTES, 12);
  sector.writeBigUInt64LE(BigInt(args.myLba), 24);
  sector.writeBigUInt64LE(BigInt(args.alternateLba), 32);
  sector.writeBigUInt64LE(BigInt(args.geometry.firstUsableLba), 40);
  sector.writeBigUInt64LE(BigInt(args.geometry.lastUsableLba), 48);
  sector.set(encodeGuid(args.diskGuid, 'diskGuid'), 56);
  sector.writeBigUInt64LE(BigInt(args.entriesLba), 72);
  sector.writeUInt32LE(GPT_DEFAULT_ENTRY_COUNT, 80);
  sector.writeUInt32LE(GPT_ENTRY_BYTES, 84);
  sector.writeUInt32LE(args.entriesCrc, 88);
  sector.writeUInt32LE(gptHeaderCrc(sector, GPT_HEADER_BYTES), 16);
  return sector;
}

/** The entry array bytes (128 entries of 128 bytes); throws InvalidOptionError for a bad spec. */
export function encodeGptEntries(partitions: readonly GptPartitionSpec[]): Buffer {
  if (partitions.length > GPT_DEFAULT_ENTRY_COUNT) {
    throw new InvalidOptionError({
      option: 'layout.partitions',
      value: partitions.length,
      message: `a GPT holds at most ${GPT_DEFAULT_ENTRY_COUNT} partitions`,
    });
  }
  const array = Buffer.alloc(GPT_DEFAULT_ENTRY_COUNT * GPT_ENTRY_BYTES);
  partitions.forEach((partition, index) => {
    const at = index * GPT_ENTRY_BYTES;
    const name = partition.name ?? '';
    if (name.length > GPT_NAME_UNITS) {
      throw new InvalidOptionError({
        option: 'layout.partitions.label',
        value: name,
        message: `GPT partition name '${name}' is longer than ${GPT_NAME_UNITS} UTF-16 units`,
      });
    }
    array.set(encodeGuid(partition.typeGuid, 'type'), at);
    array.set(encodeGuid(partition.uuid, 'uuid'), at + 16);
    array.writeBigUInt64LE(BigInt(partition.firstLba), at + 32);
    array.writeBigUInt64LE(BigInt(partition.lastLba), at + 40);
    array.writeBigUInt64LE(partition.attributes ?? 0n, at + 48);
    array.write(name, at + 56, GPT_NAME_UNITS * 2, 'utf16le');
  });
  return array;
}

/**
 * The sectors (index, bytes) of a complete GPT on a disk of `diskSectors`: protective MBR (keeping
 * `bootCode`), primary header + array, backup array + header.
 */
export function encodeGpt(
  diskSectors: number,
  diskGuid: string,
  partitions: readonly GptPartitionSpec[],
  bootCode?: Uint8Array,
): Array<{ sector: number; bytes: Buffer }> {
  const geometry = gptGeometry(diskSectors);
  if (geometry.lastUsableLba < geometry.firstUsableLba) {
    throw new InvalidOptionError({
      option: 'layout',
      value: diskSectors,
      message: `disk of ${diskSectors} sectors is too small for a GPT`,
    });
  }
  for (const partition of partitions) {
    if (
      partition.firstLba < geometry.firstUsableLba ||
      partition.lastLba > geometry.lastUsableLba ||
      partition.lastLba < partition.firstLba
    ) {
      throw new InvalidOptionError({
        option: 'layout.partitions',
        value: partition.firstLba,
        message: `partition ${partition.firstLba}..${partition.lastLba} lies outside the usable range ${geometry.firstUsableLba}..${geometry.lastUsableLba}`,
      });
    }
  }
  const entries = encodeGptEntries(partitions);
  const entriesCrc = crc32(entries);
  const protective = Buffer.alloc(SECTOR_BYTES);
  if (bootCode) protective.set(bootCode.subarray(0, MBR_BOOT_CODE_BYTES));
  protective[MBR_SIGNATURE_OFFSET] = 0x55;
  protective[MBR_SIGNATURE_OFFSET + 1] = 0xaa;
  encodeMbrSlot(protective, 0, {
    status: 0,
    typeByte: MBR_GPT_PROTECTIVE_TYPE,
    startSector: 1,
    sectorCount: Math.min(diskSectors - 1, MBR_MAX_SECTORS),
  });
  // UEFI 5.2.3: the protective entry's starting CHS is 00 02 00.
  protective.set([0x00, 0x02, 0x00], 446 + 1);
  const primary = encodeHeader({
    myLba: 1,
    alternateLba: geometry.backupHeaderLba,
    entriesLba: 2,
    diskGuid,
    entriesCrc,
    geometry,
  });
  const backup = encodeHeader({
    myLba: geometry.backupHeaderLba,
    alternateLba: 1,
    entriesLba: geometry.backupEntriesLba,
    diskGuid,
    entriesCrc,
    geometry,
  });
  return [
    { sector: 0, bytes: protective },
    { sector: 1, bytes: primary },
    { sector: 2, bytes: entries },
    { sector: geometry.backupEntriesLba, bytes: entries },
    { sector: geometry.backupHeaderLba, bytes: backup },
  ];
}
