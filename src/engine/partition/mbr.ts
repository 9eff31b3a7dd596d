// MBR ("dos") partition tables: the four primary slots of sector 0 and the EBR chain of logical
// partitions inside an extended partition. Layout as in the IBM PC MBR (UEFI 2.10 section 5.2.1,
// "Legacy MBR") and Linux's block/partitions/msdos.c for the EBR chain and the numbering of logicals.

import { CorruptImageError, InvalidOptionError } from '../errors.ts';
import { MBR_EXTENDED_TYPES, mbrTypeName } from './type-names.ts';
import {
  type PartitionEntry,
  type PartitionIo,
  type PartitionTable,
  readSectors,
  SECTOR_BYTES,
} from './types.ts';

export const MBR_SIGNATURE_OFFSET = 510;
export const MBR_DISK_SIGNATURE_OFFSET = 440;
export const MBR_ENTRIES_OFFSET = 446;
export const MBR_ENTRY_BYTES = 16;
export const MBR_GPT_PROTECTIVE_TYPE = 0xee;
/** Bytes 0..439 hold boot code, which rewriting a table keeps. */
export const MBR_BOOT_CODE_BYTES = 440;
/** The EBR chain is followed at most this far (Linux stops at the minor-number limit, far below). */
export const MAX_LOGICAL_PARTITIONS = 256;
/** 32-bit LBA fields: an MBR cannot describe sectors at or past 2^32. */
export const MBR_MAX_SECTORS = 0xffffffff;

export interface MbrSlot {
  status: number;
  typeByte: number;
  startSector: number;
  sectorCount: number;
}

/** Decodes the four 16-byte slots of an MBR or EBR sector (empty slots included). */
export function decodeMbrSlots(sector: Uint8Array): MbrSlot[] {
  const view = Buffer.from(sector.buffer, sector.byteOffset, SECTOR_BYTES);
  const slots: MbrSlot[] = [];
  for (let index = 0; index < 4; index++) {
    const at = MBR_ENTRIES_OFFSET + index * MBR_ENTRY_BYTES;
    slots.push({
      status: view.readUInt8(at),
      typeByte: view.readUInt8(at + 4),
      startSector: view.readUInt32LE(at + 8),
      sectorCount: view.readUInt32LE(at + 12),
    });
  }
  return slots;
}

/** True when the sector ends in 55 AA and every slot's status is 0x00 or 0x80 (msdos.c's sanity check). */
export function looksLikeMbr(sector: Uint8Array): boolean {
  if (
    sector.length < SECTOR_BYTES ||
    sector[MBR_SIGNATURE_OFFSET] !== 0x55 ||
    sector[MBR_SIGNATURE_OFFSET + 1] !== 0xaa
  ) {
    return false;
  }
  return decodeMbrSlots(sector).every((slot) => slot.status === 0 || slot.status === 0x80);
}

/** True when sector 0 is a protective (or hybrid) MBR: a valid MBR with a type-0xEE slot. */
export function hasProtectiveEntry(sector: Uint8Array): boolean {
  return (
    looksLikeMbr(sector) && decodeMbrSlots(sector).some((slot) => slot.typeByte === MBR_GPT_PROTECTIVE_TYPE)
  );
}

function entry(
  number: number,
  kind: PartitionEntry['kind'],
  slot: MbrSlot,
  startSector: number,
): PartitionEntry {
  const typeName = mbrTypeName(slot.typeByte);
  return {
    number,
    kind,
    startSector,
    sectorCount: slot.sectorCount,
    startBytes: startSector * SECTOR_BYTES,
    sizeBytes: slot.sectorCount * SECTOR_BYTES,
    type: slot.typeByte.toString(16).padStart(2, '0'),
    ...(typeName ? { typeName } : {}),
    bootable: slot.status === 0x80,
  };
}

/**
 * Reads an MBR table; undefined when sector 0 is not one. Logical partitions are numbered from 5 in
 * chain order. A broken EBR chain ends the list with a warning; partitions past the disk end are
 * listed with a warning (fdisk does the same). Throws ImageIoError from the device.
 */
export async function readMbr(io: PartitionIo, file: string): Promise<PartitionTable | undefined> {
  const diskSectors = Math.floor(io.sizeBytes / SECTOR_BYTES);
  if (diskSectors < 1) return undefined;
  const sector0 = await readSectors(io, 0, 1);
  if (!looksLikeMbr(sector0)) return undefined;
  const warnings: string[] = [];
  const partitions: PartitionEntry[] = [];
  let extended: MbrSlot | undefined;
  decodeMbrSlots(sector0).forEach((slot, index) => {
    if (slot.typeByte === 0 || slot.sectorCount === 0) return;
    const isExtended = MBR_EXTENDED_TYPES.has(slot.typeByte);
    partitions.push(entry(index + 1, isExtended ? 'extended' : 'primary', slot, slot.startSector));
    if (isExtended) {
      if (extended) warnings.push(`slot ${index + 1}: a second extended partition is ignored`);
      else extended = slot;
    }
  });
  if (extended) partitions.push(...(await readLogicals(io, file, extended, diskSectors, warnings)));
  for (const partition of partitions) {
    if (partition.startSector + partition.sectorCount > diskSectors) {
      warnings.push(`partition ${partition.number} ends past the end of the disk (${diskSectors} sectors)`);
    }
  }
  const diskId = `0x${sector0.readUInt32LE(MBR_DISK_SIGNATURE_OFFSET).toString(16).padStart(8, '0')}`;
  return { table: 'mbr', sectorSizeBytes: SECTOR_BYTES, diskId, partitions, warnings };
}

async function readLogicals(
  io: PartitionIo,
  file: string,
  extended: MbrSlot,
  diskSectors: number,
  warnings: string[],
): Promise<PartitionEntry[]> {
  const logicals: PartitionEntry[] = [];
  const visited = new Set<number>();
  let ebrSector = extended.startSector;
  while (logicals.length < MAX_LOGICAL_PARTITIONS) {
    if (ebrSector >= diskSectors || visited.has(ebrSector)) {
      warnings.push(
        `EBR chain ${visited.has(ebrSector) ? 'loops back' : 'points past the disk end'} at sector ${ebrSector}`,
      );
      break;
    }
    visited.add(ebrSector);
    const sector = await readSectors(io, ebrSector, 1);
    if (sector[MBR_SIGNATURE_OFFSET] !== 0x55 || sector[MBR_SIGNATURE_OFFSET + 1] !== 0xaa) {
      if (logicals.length > 0 || ebrSector !== extended.startSector) {
        warnings.push(`EBR at sector ${ebrSector} has no 55 AA signature; logical partitions end here`);
      }
      break;
    }
    const [first, next] = decodeMbrSlots(sector);
    if (first && first.typeByte !== 0 && first.sectorCount !== 0) {
      logicals.push(entry(5 + logicals.length, 'logical', first, ebrSector + first.startSector));
    }
    if (!next || next.typeByte === 0 || next.sectorCount === 0) break;
    if (!MBR_EXTENDED_TYPES.has(next.typeByte)) {
      throw new CorruptImageError({
        file,
        offsetBytes: ebrSector * SECTOR_BYTES + MBR_ENTRIES_OFFSET + MBR_ENTRY_BYTES,
        lengthBytes: MBR_ENTRY_BYTES,
        message: `EBR link has type 0x${next.typeByte.toString(16)}, not an extended type`,
      });
    }
    ebrSector = extended.startSector + next.startSector;
  }
  return logicals;
}

/** CHS bytes for an LBA in the 255-head, 63-sector geometry fdisk uses; FE FF FF past cylinder 1023. */
export function lbaToChs(lba: number): [number, number, number] {
  const heads = 255;
  const sectorsPerTrack = 63;
  const cylinder = Math.floor(lba / (heads * sectorsPerTrack));
  if (cylinder > 1023) return [0xfe, 0xff, 0xff];
  const head = Math.floor(lba / sectorsPerTrack) % heads;
  const sector = (lba % sectorsPerTrack) + 1;
  return [head, (sector & 0x3f) | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

/** Writes one 16-byte slot into an MBR/EBR sector buffer. */
export function encodeMbrSlot(sector: Buffer, index: number, slot: MbrSlot): void {
  const at = MBR_ENTRIES_OFFSET + index * MBR_ENTRY_BYTES;
  if (slot.startSector > MBR_MAX_SECTORS || slot.sectorCount > MBR_MAX_SECTORS) {
    throw new InvalidOptionError({
      option: 'layout',
      value: slot.startSector,
      message: `MBR cannot address sector ${Math.max(slot.startSector, slot.sectorCount)} (32-bit LBAs: use a GPT table for disks over 2 TiB)`,
    });
  }
  sector.fill(0, at, at + MBR_ENTRY_BYTES);
  if (slot.typeByte === 0) return;
  sector.writeUInt8(slot.status, at);
  sector.set(lbaToChs(slot.startSector), at + 1);
  sector.writeUInt8(slot.typeByte, at + 4);
  sector.set(lbaToChs(slot.startSector + slot.sectorCount - 1), at + 5);
  sector.writeUInt32LE(slot.startSector, at + 8);
  sector.writeUInt32LE(slot.sectorCount, at + 12);
}

export interface MbrPartitionSpec {
  typeByte: number;
  startSector: number;
  sectorCount: number;
  bootable?: boolean;
}

export interface MbrWriteSpec {
  diskSignature: number;
  /** Up to four primaries, or up to three when `logicals` is non-empty (the extended slot is made here). */
  primaries: MbrPartitionSpec[];
  /** Each logical partition's EBR sits at `startSector - ebrGapSectors`. */
  logicals: MbrPartitionSpec[];
  /** Sectors between an EBR and its partition (fdisk leaves one alignment unit). */
  ebrGapSectors: number;
}

/** The sectors (index, bytes) an MBR table occupies: sector 0 and one EBR per logical partition. */
export function encodeMbr(
  spec: MbrWriteSpec,
  bootCode?: Uint8Array,
): Array<{ sector: number; bytes: Buffer }> {
  const maxPrimaries = spec.logicals.length > 0 ? 3 : 4;
  if (spec.primaries.length > maxPrimaries) {
    throw new InvalidOptionError({
      option: 'layout.partitions',
      value: spec.primaries.length,
      message: `an MBR holds at most ${maxPrimaries} primary partitions here`,
    });
  }
  const sector0 = Buffer.alloc(SECTOR_BYTES);
  if (bootCode) sector0.set(bootCode.subarray(0, MBR_BOOT_CODE_BYTES));
  sector0.writeUInt32LE(spec.diskSignature >>> 0, MBR_DISK_SIGNATURE_OFFSET);
  sector0[MBR_SIGNATURE_OFFSET] = 0x55;
  sector0[MBR_SIGNATURE_OFFSET + 1] = 0xaa;
  spec.primaries.forEach((partition, index) => {
    encodeMbrSlot(sector0, index, { status: partition.bootable ? 0x80 : 0, ...partition });
  });
  const writes = [{ sector: 0, bytes: sector0 }];
  const first = spec.logicals[0];
  const last = spec.logicals.at(-1);
  if (first && last) {
    const extendedStart = first.startSector - spec.ebrGapSectors;
    const extendedEnd = last.startSector + last.sectorCount;
    encodeMbrSlot(sector0, spec.primaries.length, {
      status: 0,
      typeByte: 0x05,
      startSector: extendedStart,
      sectorCount: extendedEnd - extendedStart,
    });
    spec.logicals.forEach((partition, index) => {
      const ebrSector = partition.startSector - spec.ebrGapSectors;
      const ebr = Buffer.alloc(SECTOR_BYTES);
      ebr[MBR_SIGNATURE_OFFSET] = 0x55;
      ebr[MBR_SIGNATURE_OFFSET + 1] = 0xaa;
      encodeMbrSlot(ebr, 0, {
        status: partition.bootable ? 0x80 : 0,
        typeByte: partition.typeByte,
        startSector: spec.ebrGapSectors,
        sectorCount: partition.sectorCount,
      });
      const next = spec.logicals[index + 1];
      if (next) {
        const nextEbr = next.startSector - spec.ebrGapSectors;
        // The link's start is relative to the extended partition; its size spans the next EBR to its partition's end.
        encodeMbrSlot(ebr, 1, {
          status: 0,
          typeByte: 0x05,
          startSector: nextEbr - extendedStart,
          sectorCount: next.startSector + next.sectorCount - nextEbr,
        });
      }
      writes.push({ sector: ebrSector, bytes: ebr });
    });
  }
  return writes;
}
