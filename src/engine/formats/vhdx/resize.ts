// Growing a VHDX in place (beyond qemu 7.2, which cannot resize vhdx): new BAT entries are written where
// the old size never looks (past its entry count, or a new BAT region at the end of the file), then one
// log entry switches the Virtual Disk Size item (and the region table, when the BAT moved) atomically.
// Spec: MS-VHDX 2.2.3 (Region Table), 2.3 (Log), 2.5 (BAT), 2.6.2.2 (Virtual Disk Size).

import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { readExact, setU64le, viewOf } from '../common/binary.ts';
import {
  batEntryCount,
  chunkRatio,
  encodeRegionTable,
  GUID_BAT,
  MiB,
  PAYLOAD_FULLY_PRESENT,
  PAYLOAD_ZERO,
  sameGuid,
  VHDX_REGION_TABLE_OFFSETS,
  type VhdxMetadata,
  type VhdxRegion,
} from './layout.ts';
import type { LoggedSector } from './log.ts';

const SECTOR_BYTES = 4096;
const ZERO_CHUNK_BYTES = MiB;
/** The largest VHDX (MS-VHDX 2.6.2.2). */
const MAX_VIRTUAL_BYTES = 64 * 1024 * 1024 * MiB;

/** What growing changes; the driver keeps these in memory. */
export interface VhdxGrowState {
  metadata: VhdxMetadata;
  metadataRegion: VhdxRegion;
  /** Every region of the region table, in table order (the BAT and metadata among them). */
  regions: VhdxRegion[];
  batRegion: VhdxRegion;
  bat: Uint8Array;
  fileEndBytes: number;
}

function batIndexOf(blockIndex: number, metadata: VhdxMetadata): number {
  return blockIndex + Math.floor(blockIndex / chunkRatio(metadata));
}

async function writeZeros(file: HostFile, offsetBytes: number, lengthBytes: number): Promise<void> {
  const zeros = new Uint8Array(Math.min(ZERO_CHUNK_BYTES, lengthBytes));
  for (let done = 0; done < lengthBytes; done += zeros.length) {
    await file.write(offsetBytes + done, zeros.subarray(0, Math.min(zeros.length, lengthBytes - done)));
  }
}

/** The 4 KiB sectors of `next` that differ from the file's bytes at `offsetBytes`. */
async function changedSectors(
  file: HostFile,
  offsetBytes: number,
  next: Uint8Array,
): Promise<LoggedSector[]> {
  const current = await readExact(file, offsetBytes, next.length, 'VHDX region table');
  const sectors: LoggedSector[] = [];
  for (let at = 0; at < next.length; at += SECTOR_BYTES) {
    const sector = next.subarray(at, at + SECTOR_BYTES);
    if (!Buffer.from(sector).equals(Buffer.from(current.subarray(at, at + SECTOR_BYTES))))
      sectors.push({ fileOffsetBytes: offsetBytes + at, sector: Uint8Array.from(sector) });
  }
  return sectors;
}

/**
 * Grows the guest to `newSizeBytes` (a multiple of the logical sector size, at most 64 TiB). Until
 * `commit` runs (the driver logs its sectors, syncs, then writes them in place) every write lands where
 * the old metadata never reads, and the file is synced first, so a crash leaves the old or the new
 * image, never a mix. Throws InvalidOptionError for a bad size, UnsupportedError for shrinking.
 */
export async function growVhdx(args: {
  file: HostFile;
  path: string;
  state: VhdxGrowState;
  newSizeBytes: number;
  maxBatBytes: number;
  commit: (sectors: LoggedSector[]) => Promise<void>;
}): Promise<VhdxGrowState> {
  const { file, path, state, newSizeBytes } = args;
  const { metadata } = state;
  const oldSizeBytes = metadata.virtualSizeBytes;
  if (newSizeBytes < oldSizeBytes)
    throw new UnsupportedError({
      format: 'vhdx',
      feature: 'shrinking',
      message: `${path}: vdisk grows VHDX images but does not shrink them`,
    });
  if (newSizeBytes % metadata.logicalSectorBytes !== 0 || newSizeBytes > MAX_VIRTUAL_BYTES) {
    throw new InvalidOptionError({
      option: 'size',
      value: newSizeBytes,
      message: `VHDX size must be a multiple of the ${metadata.logicalSectorBytes}-byte logical sector, at most 64 TiB`,
    });
  }
  const sizeItemOffset = metadata.virtualSizeItemOffsetBytes;
  if (sizeItemOffset === undefined)
    throw new UnsupportedError({ format: 'vhdx', feature: 'resize without a Virtual Disk Size item' });
  const blockBytes = metadata.blockSizeBytes;
  const grown: VhdxMetadata = { ...metadata, virtualSizeBytes: newSizeBytes };
  const oldCount = batEntryCount(metadata);
  const newCount = batEntryCount(grown);
  if (newCount * 8 > args.maxBatBytes)
    throw new InvalidOptionError({
      option: 'size',
      value: newSizeBytes,
      message: `${path}: a ${newSizeBytes}-byte VHDX with ${blockBytes}-byte blocks needs a BAT larger than ${args.maxBatBytes} bytes`,
    });
  let fileEndBytes = state.fileEndBytes;

  // The old last block's bytes past the old end become guest bytes: make sure they read as zeros.
  const tailInBlock = oldSizeBytes % blockBytes;
  if (tailInBlock !== 0) {
    const lastIndex = batIndexOf(Math.floor(oldSizeBytes / blockBytes), metadata);
    const entry = viewOf(state.bat).getBigUint64(lastIndex * 8, true);
    if (Number(entry & 7n) === PAYLOAD_FULLY_PRESENT) {
      const hostBytes = Number(entry >> 20n) * MiB;
      const from = hostBytes + tailInBlock;
      const to = Math.min(hostBytes + blockBytes, fileEndBytes);
      if (to > from) await writeZeros(file, from, to - from);
    }
  }

  // The grown BAT: old entries, then new payload entries (ZERO, or fixed blocks at the file's end),
  // sector-bitmap entries NOT_PRESENT as for any image without a parent.
  const bat = new Uint8Array(newCount * 8);
  bat.set(state.bat.subarray(0, oldCount * 8));
  let batRegion = state.batRegion;
  let regions = state.regions;
  const movesBat = newCount * 8 > batRegion.lengthBytes;
  if (movesBat) {
    const offsetBytes = Math.ceil(fileEndBytes / MiB) * MiB;
    const lengthBytes = Math.ceil((newCount * 8) / MiB) * MiB;
    if (lengthBytes > 0xffffffff)
      throw new InvalidOptionError({
        option: 'size',
        value: newSizeBytes,
        message: `${path}: BAT too large`,
      });
    batRegion = { ...batRegion, offsetBytes, lengthBytes };
    regions = regions.map((region) => (sameGuid(region.guid, GUID_BAT) ? batRegion : region));
    fileEndBytes = offsetBytes + lengthBytes;
  }
  const view = viewOf(bat);
  const ratio = chunkRatio(metadata);
  const newBlocks = Math.ceil(newSizeBytes / blockBytes);
  let dataEndBytes = Math.ceil(fileEndBytes / MiB) * MiB;
  for (let block = Math.ceil(oldSizeBytes / blockBytes); block < newBlocks; block++) {
    const index = block + Math.floor(block / ratio);
    if (metadata.leaveBlocksAllocated) {
      setU64le(view, index * 8, dataEndBytes + PAYLOAD_FULLY_PRESENT);
      dataEndBytes += blockBytes;
    } else {
      setU64le(view, index * 8, PAYLOAD_ZERO);
    }
  }
  if (metadata.leaveBlocksAllocated) fileEndBytes = Math.max(fileEndBytes, dataEndBytes);
  if (fileEndBytes > state.fileEndBytes) await file.truncate(fileEndBytes);
  if (movesBat) await file.write(batRegion.offsetBytes, bat);
  else await file.write(batRegion.offsetBytes + oldCount * 8, bat.subarray(oldCount * 8));
  await file.sync();

  // The switch, in one log entry: the size item's sector and, when the BAT moved, the region tables.
  const sectors: LoggedSector[] = [];
  if (movesBat) {
    const table = encodeRegionTable(regions);
    for (const at of VHDX_REGION_TABLE_OFFSETS) sectors.push(...(await changedSectors(file, at, table)));
  }
  // The item may straddle two sectors (nothing aligns it): log every sector its 8 bytes touch.
  const sizeAt = state.metadataRegion.offsetBytes + sizeItemOffset;
  const firstSectorAt = Math.floor(sizeAt / SECTOR_BYTES) * SECTOR_BYTES;
  const spanBytes = Math.ceil((sizeAt + 8 - firstSectorAt) / SECTOR_BYTES) * SECTOR_BYTES;
  const span = await readExact(file, firstSectorAt, spanBytes, 'VHDX metadata');
  setU64le(viewOf(span), sizeAt - firstSectorAt, newSizeBytes);
  for (let at = 0; at < spanBytes; at += SECTOR_BYTES)
    sectors.push({ fileOffsetBytes: firstSectorAt + at, sector: span.slice(at, at + SECTOR_BYTES) });
  await args.commit(sectors);
  return { metadata: grown, metadataRegion: state.metadataRegion, regions, batRegion, bat, fileEndBytes };
}
