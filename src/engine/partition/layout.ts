// Writes a whole new partition table from a short spec (`{ table, partitions: [{ sizeBytes?, type,
// label? }] }`), placing partitions as fdisk does: 1 MiB aligned starts, sizes rounded up to whole
// sectors, the last partition taking the rest. MBR layouts of more than four partitions use three
// primaries and an extended partition whose logicals each have an EBR 1 MiB before them.

import { randomInt } from 'node:crypto';
import { InvalidOptionError } from '../errors.ts';
import { encodeGpt, GPT_SIGNATURE, gptGeometry } from './gpt.ts';
import { randomGuid } from './guid.ts';
import { encodeMbr, type MbrPartitionSpec } from './mbr.ts';
import { readPartitionTable } from './read.ts';
import { resolveGptType, resolveMbrType } from './type-names.ts';
import {
  ALIGNMENT_BYTES,
  type PartitionIo,
  type PartitionTable,
  readSectors,
  SECTOR_BYTES,
} from './types.ts';

export interface LayoutPartition {
  /** Bytes, rounded up to whole sectors; omitted only on the last partition (it takes the rest). */
  sizeBytes?: number;
  /** An alias (`linux`, `efi`, `swap`, `vfat`, ...), an MBR type byte (`83`) or a GPT type GUID. */
  type?: string;
  /** GPT partition name (ignored for MBR). */
  label?: string;
  bootable?: boolean;
  /** The filesystem the agent makes on it (`ext4`, `vfat`, ...); picks the default `type`. */
  filesystem?: string;
}

export interface PartitionLayout {
  table: 'mbr' | 'gpt';
  partitions: LayoutPartition[];
  /** MBR: `0x1234abcd`; GPT: a GUID. Random when absent. */
  diskId?: string;
}

/** Where one partition of a layout lands. */
export interface PlannedPartition {
  startSector: number;
  sectorCount: number;
  /** MBR logicals only: the EBR's sector. */
  ebrSector?: number;
  source: LayoutPartition;
}

/** At most this many partitions (a GPT's 128 entries; an MBR chain is bounded by the same). */
export const MAX_LAYOUT_PARTITIONS = 128;
const ALIGNMENT_SECTORS = ALIGNMENT_BYTES / SECTOR_BYTES;

function invalid(message: string, value?: unknown): InvalidOptionError {
  return new InvalidOptionError({ option: 'layout', value, message });
}

function alignUp(sector: number): number {
  return Math.ceil(sector / ALIGNMENT_SECTORS) * ALIGNMENT_SECTORS;
}

/** Pure: where each partition of `layout` goes on a disk of `diskSizeBytes`. Throws InvalidOptionError. */
export function planLayout(diskSizeBytes: number, layout: PartitionLayout): PlannedPartition[] {
  const count = layout.partitions.length;
  if (layout.table !== 'mbr' && layout.table !== 'gpt')
    throw invalid(`layout.table must be mbr or gpt, not '${String(layout.table)}'`, layout.table);
  if (count === 0 || count > MAX_LAYOUT_PARTITIONS)
    throw invalid(`a layout needs 1 to ${MAX_LAYOUT_PARTITIONS} partitions (got ${count})`, count);
  const diskSectors = Math.floor(diskSizeBytes / SECTOR_BYTES);
  const endSector = layout.table === 'gpt' ? gptGeometry(diskSectors).lastUsableLba + 1 : diskSectors;
  const useLogicals = layout.table === 'mbr' && count > 4;
  const planned: PlannedPartition[] = [];
  let cursor = ALIGNMENT_SECTORS;
  layout.partitions.forEach((partition, index) => {
    const isLast = index === count - 1;
    let ebrSector: number | undefined;
    if (useLogicals && index >= 3) {
      ebrSector = cursor;
      cursor += ALIGNMENT_SECTORS;
    }
    let sectorCount: number;
    if (partition.sizeBytes === undefined) {
      if (!isLast)
        throw invalid(
          `partition ${index + 1} has no size: only the last partition may take the rest`,
          index + 1,
        );
      sectorCount = endSector - cursor;
    } else {
      if (!Number.isSafeInteger(partition.sizeBytes) || partition.sizeBytes <= 0)
        throw invalid(`partition ${index + 1} size must be a positive byte count`, partition.sizeBytes);
      sectorCount = Math.ceil(partition.sizeBytes / SECTOR_BYTES);
    }
    if (sectorCount <= 0 || cursor + sectorCount > endSector) {
      throw invalid(
        `partition ${index + 1} does not fit: the disk's usable sectors end at ${endSector}`,
        partition.sizeBytes,
      );
    }
    planned.push({
      startSector: cursor,
      sectorCount,
      ...(ebrSector === undefined ? {} : { ebrSector }),
      source: partition,
    });
    cursor = alignUp(cursor + sectorCount);
  });
  return planned;
}

/** The partition type: as given, else the filesystem's usual one, else Linux. */
function typeOf(partition: LayoutPartition): string {
  if (partition.type) return partition.type;
  return partition.filesystem && partition.filesystem !== 'none' ? partition.filesystem : 'linux';
}

function parseMbrDiskId(text: string | undefined): number {
  if (text === undefined) return randomInt(1, 0xffffffff);
  const match = /^(?:0x)?([0-9a-f]{1,8})$/i.exec(text);
  if (!match?.[1]) throw invalid(`MBR disk id '${text}' is not a 32-bit hex number`, text);
  return Number.parseInt(match[1], 16);
}

/**
 * Writes `layout` as a new table on `io` (replacing any table; other data is left alone except the
 * first 128 KiB of each new partition, zeroed so stale filesystem signatures do not survive), flushes,
 * and returns the table as read back. Throws InvalidOptionError for a layout that does not fit.
 */
export async function applyLayout(
  io: PartitionIo,
  layout: PartitionLayout,
  file = 'device',
): Promise<PartitionTable> {
  if (!io.write) throw invalid('the device is not writable');
  const planned = planLayout(io.sizeBytes, layout);
  const diskSectors = Math.floor(io.sizeBytes / SECTOR_BYTES);
  const bootCode = await readSectors(io, 0, 1);
  let writes: Array<{ sector: number; bytes: Buffer }>;
  if (layout.table === 'gpt') {
    const partitions = planned.map((partition) => ({
      typeGuid: resolveGptType(typeOf(partition.source)),
      uuid: randomGuid(),
      firstLba: partition.startSector,
      lastLba: partition.startSector + partition.sectorCount - 1,
      name: partition.source.label ?? '',
      attributes: partition.source.bootable ? 4n : 0n, // bit 2: legacy BIOS bootable
    }));
    writes = encodeGpt(diskSectors, layout.diskId ?? randomGuid(), partitions, bootCode);
  } else {
    const toSpec = (partition: PlannedPartition): MbrPartitionSpec => ({
      typeByte: resolveMbrType(typeOf(partition.source)),
      startSector: partition.startSector,
      sectorCount: partition.sectorCount,
      bootable: partition.source.bootable ?? false,
    });
    const useLogicals = planned.length > 4;
    writes = encodeMbr(
      {
        diskSignature: parseMbrDiskId(layout.diskId),
        primaries: planned.slice(0, useLogicals ? 3 : 4).map(toSpec),
        logicals: useLogicals ? planned.slice(3).map(toSpec) : [],
        ebrGapSectors: ALIGNMENT_SECTORS,
      },
      bootCode,
    );
    // A GPT left behind would win over the new MBR (Linux tries GPT first when sector 0 says 0xEE;
    // blkid and sfdisk warn): wipe both header signatures, as sfdisk does.
    for (const lba of [1, diskSectors - 1]) {
      const sector = await readSectors(io, lba, 1);
      if (sector.toString('latin1', 0, 8) === GPT_SIGNATURE)
        writes.push({ sector: lba, bytes: Buffer.alloc(SECTOR_BYTES) });
    }
  }
  const wipeBytes = 128 * 1024;
  for (const partition of planned) {
    const lengthBytes = Math.min(wipeBytes, partition.sectorCount * SECTOR_BYTES);
    // writeZeroes lets a format record zeros (a qcow2 zero cluster) instead of allocating data.
    if (io.writeZeroes) await io.writeZeroes(partition.startSector * SECTOR_BYTES, lengthBytes);
    else await io.write(partition.startSector * SECTOR_BYTES, Buffer.alloc(lengthBytes));
  }
  // Table sectors last: a crash before this point leaves the old table (or none), never a half-new one.
  for (const write of writes.filter((entry) => entry.sector !== 0 && entry.sector !== 1)) {
    await io.write(write.sector * SECTOR_BYTES, write.bytes);
  }
  for (const write of writes
    .filter((entry) => entry.sector === 1 || entry.sector === 0)
    .sort((a, b) => b.sector - a.sector)) {
    await io.write(write.sector * SECTOR_BYTES, write.bytes);
  }
  await io.flush?.();
  const table = await readPartitionTable(io, file);
  if (!table) throw invalid('the table just written does not read back');
  return table;
}
