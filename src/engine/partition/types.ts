// The partition-table model shared by the MBR and GPT codecs, `vdisk partitions` and the attach agent.
// Sectors are 512-byte logical sectors (what kpartx, fdisk and the nbd driver use by default); every
// entry also carries byte offsets so `mount -o loop,offset=` needs no arithmetic.

import type { BlockDevice } from '../block-device.ts';

/** Logical sector size every table here is read and written with (fdisk's default; nbd's default block size). */
export const SECTOR_BYTES = 512;

/** Partition start alignment: 1 MiB, as fdisk, sfdisk and parted align by default. */
export const ALIGNMENT_BYTES = 1024 * 1024;

/** The byte I/O the codecs need: a BlockDevice satisfies it, and so does a Buffer wrapped by bufferIo(). */
export type PartitionIo = Pick<BlockDevice, 'sizeBytes' | 'read'> &
  Partial<Pick<BlockDevice, 'write' | 'writeZeroes' | 'flush'>>;

export type PartitionKind = 'primary' | 'extended' | 'logical' | 'gpt';

export interface PartitionEntry {
  /** 1-based; MBR: 1-4 primary/extended, 5+ logical (as Linux numbers them); GPT: entry index + 1. */
  number: number;
  kind: PartitionKind;
  startSector: number;
  sectorCount: number;
  startBytes: number;
  sizeBytes: number;
  /** MBR: the type byte as two lowercase hex digits (`83`); GPT: the type GUID in uppercase. */
  type: string;
  /** A readable name for `type` (`Linux`, `EFI System`), when known. */
  typeName?: string;
  bootable?: boolean;
  /** GPT partition name (UTF-16LE in the entry). */
  name?: string;
  /** GPT unique partition GUID, uppercase. */
  uuid?: string;
  /** GPT attribute bits as a decimal string (64-bit). */
  attributes?: string;
}

export interface PartitionTable {
  table: 'mbr' | 'gpt';
  sectorSizeBytes: number;
  /** MBR: disk signature `0x1234abcd`; GPT: disk GUID, uppercase. */
  diskId: string;
  partitions: PartitionEntry[];
  /** GPT only: the usable LBA range (inclusive). */
  firstUsableSector?: number;
  lastUsableSector?: number;
  /** Problems that did not stop reading (a bad backup GPT header, an EBR chain cut short). */
  warnings: string[];
}

/** Wraps a Buffer as PartitionIo (for tests and for tables built in memory). */
export function bufferIo(buffer: Uint8Array): PartitionIo {
  return {
    sizeBytes: buffer.length,
    async read(offsetBytes, target) {
      target.set(buffer.subarray(offsetBytes, offsetBytes + target.length));
    },
    async write(offsetBytes, data) {
      buffer.set(data, offsetBytes);
    },
    async flush() {},
  };
}

/** Reads `sectorCount` sectors starting at `sector`. */
export async function readSectors(io: PartitionIo, sector: number, sectorCount: number): Promise<Buffer> {
  const buffer = Buffer.alloc(sectorCount * SECTOR_BYTES);
  await io.read(sector * SECTOR_BYTES, buffer);
  return buffer;
}
