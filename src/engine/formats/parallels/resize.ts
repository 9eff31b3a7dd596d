// Growing a Parallels image in place (beyond qemu 7.2, which cannot resize parallels): a larger BAT
// usually fits in the padding before data_off; when it does not, the clusters in its way are copied to
// the data end first. The header (nb_sectors, bat_entries, data_off) is written last, in one sector.
// Spec: qemu docs/interop/parallels.txt ("Header", "BAT").

import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { viewOf } from '../common/binary.ts';
import {
  batEntryOffsetBytes,
  encodeParallelsHeader,
  PARALLELS_HEADS,
  PARALLELS_MAX_BAT_ENTRIES,
  PARALLELS_SECTORS_PER_CYLINDER,
  type ParallelsHeader,
} from './header.ts';

const SECTOR_BYTES = 512;
const COPY_CHUNK_BYTES = 1024 * 1024;

/** The driver's mutable state that growing changes. */
export interface ParallelsGrowState {
  header: ParallelsHeader;
  bat: Uint32Array;
  dataEndSectors: number;
  fileSizeBytes: number;
}

async function copyRange(
  file: HostFile,
  fromBytes: number,
  toBytes: number,
  lengthBytes: number,
): Promise<void> {
  const chunk = new Uint8Array(Math.min(COPY_CHUNK_BYTES, lengthBytes));
  for (let done = 0; done < lengthBytes; done += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, lengthBytes - done));
    const count = await file.read(fromBytes + done, part);
    part.fill(0, count);
    await file.write(toBytes + done, part);
  }
}

async function writeZeros(file: HostFile, offsetBytes: number, lengthBytes: number): Promise<void> {
  const zeros = new Uint8Array(Math.min(COPY_CHUNK_BYTES, lengthBytes));
  for (let done = 0; done < lengthBytes; done += zeros.length)
    await file.write(offsetBytes + done, zeros.subarray(0, Math.min(zeros.length, lengthBytes - done)));
}

/** Current start of the data area in bytes (data_off, or right after the BAT when data_off is 0). */
function dataOffsetBytes(header: ParallelsHeader): number {
  if (header.dataOffsetSectors !== 0) return header.dataOffsetSectors * SECTOR_BYTES;
  return Math.ceil(batEntryOffsetBytes(header.batEntries) / SECTOR_BYTES) * SECTOR_BYTES;
}

/**
 * Grows the guest to `newSizeBytes` (a multiple of 512). Crash order: moved clusters are copied and
 * synced before their BAT entries change; the BAT's new tail is zeroed and synced before the header
 * that counts it; the header goes last. Every prefix is the old image (plus leaked clusters at the end)
 * or the new one. Throws UnsupportedError for shrinking, InvalidOptionError for sizes the format can't hold.
 */
export async function growParallels(args: {
  file: HostFile;
  path: string;
  state: ParallelsGrowState;
  newSizeBytes: number;
}): Promise<ParallelsGrowState> {
  const { file, path, state, newSizeBytes } = args;
  const { header } = state;
  const clusterBytes = header.clusterSectors * SECTOR_BYTES;
  const multiplier = header.isExtended ? header.clusterSectors : 1;
  const oldSizeBytes = header.totalSectors * SECTOR_BYTES;
  if (newSizeBytes < oldSizeBytes)
    throw new UnsupportedError({
      format: 'parallels',
      feature: 'shrinking',
      message: `${path}: vdisk grows Parallels images but does not shrink them`,
    });
  const newSectors = newSizeBytes / SECTOR_BYTES;
  const newEntries = Math.ceil(newSizeBytes / clusterBytes);
  const tooLarge =
    !Number.isInteger(newSectors) ||
    newEntries > PARALLELS_MAX_BAT_ENTRIES ||
    (!header.isExtended && newSectors > 0xffffffff);
  if (tooLarge) {
    throw new InvalidOptionError({
      option: 'size',
      value: newSizeBytes,
      message: `Parallels size must be a multiple of 512 bytes with at most ${PARALLELS_MAX_BAT_ENTRIES} clusters${header.isExtended ? '' : ' and 2^32 sectors (old format)'}`,
    });
  }
  const bat = new Uint32Array(Math.max(newEntries, state.bat.length));
  bat.set(state.bat);
  let dataEndSectors = state.dataEndSectors;
  let fileSizeBytes = state.fileSizeBytes;
  let dataOffsetSectors = header.dataOffsetSectors;
  const oldBatEndBytes = batEntryOffsetBytes(state.bat.length);
  const newBatEndBytes = batEntryOffsetBytes(bat.length);
  const oldDataOffsetBytes = dataOffsetBytes(header);
  if (newBatEndBytes > oldDataOffsetBytes) {
    // The data area must start after the larger BAT, cluster aligned as qemu creates it.
    const newDataOffsetBytes = Math.ceil(newBatEndBytes / clusterBytes) * clusterBytes;
    if (header.extensionOffset !== 0 && header.extensionOffset * SECTOR_BYTES < newDataOffsetBytes) {
      throw new UnsupportedError({
        format: 'parallels',
        feature: 'growing the BAT over a format extension cluster',
        message: `${path}: the format extension at sector ${header.extensionOffset} lies where the larger BAT must go`,
      });
    }
    dataOffsetSectors = newDataOffsetBytes / SECTOR_BYTES;
    dataEndSectors = Math.max(dataEndSectors, dataOffsetSectors);
    const moved: number[] = [];
    for (let index = 0; index < state.bat.length; index++) {
      const entry = bat[index] ?? 0;
      if (entry === 0 || entry * multiplier * SECTOR_BYTES >= newDataOffsetBytes) continue;
      if (dataEndSectors % multiplier !== 0 || dataEndSectors / multiplier > 0xffffffff) {
        throw new UnsupportedError({
          format: 'parallels',
          feature: 'moving a cluster past the BAT',
          message: `${path}: the data end cannot be expressed in a BAT entry`,
        });
      }
      await copyRange(file, entry * multiplier * SECTOR_BYTES, dataEndSectors * SECTOR_BYTES, clusterBytes);
      bat[index] = dataEndSectors / multiplier;
      dataEndSectors += header.clusterSectors;
      moved.push(index);
    }
    fileSizeBytes = Math.max(fileSizeBytes, dataEndSectors * SECTOR_BYTES);
    if (moved.length > 0) {
      await file.sync();
      const entry = new Uint8Array(4);
      for (const index of moved) {
        viewOf(entry).setUint32(0, bat[index] ?? 0, true);
        await file.write(batEntryOffsetBytes(index), entry);
      }
      // The entries must be durable before the clusters' old homes are overwritten below.
      await file.sync();
    }
  }
  // The old last cluster's bytes past the old end become guest bytes: they must read as zeros.
  const tailInCluster = oldSizeBytes % clusterBytes;
  const lastEntry = tailInCluster === 0 ? 0 : (bat[Math.floor(oldSizeBytes / clusterBytes)] ?? 0);
  if (lastEntry !== 0) {
    const hostBytes = lastEntry * multiplier * SECTOR_BYTES;
    const to = Math.min(hostBytes + clusterBytes, fileSizeBytes);
    if (to > hostBytes + tailInCluster)
      await writeZeros(file, hostBytes + tailInCluster, to - hostBytes - tailInCluster);
  }
  // The new entries read 0 (unallocated) whatever the bytes there held before (padding, moved clusters).
  if (newBatEndBytes > oldBatEndBytes)
    await writeZeros(file, oldBatEndBytes, newBatEndBytes - oldBatEndBytes);
  if (fileSizeBytes > state.fileSizeBytes) await file.truncate(fileSizeBytes);
  await file.sync();
  const grownHeader: ParallelsHeader = {
    ...header,
    batEntries: bat.length,
    totalSectors: newSectors,
    cylinders: Math.floor(newSectors / (header.heads || PARALLELS_HEADS) / PARALLELS_SECTORS_PER_CYLINDER),
    dataOffsetSectors,
  };
  await file.write(0, encodeParallelsHeader(grownHeader));
  await file.sync();
  return { header: grownHeader, bat, dataEndSectors, fileSizeBytes };
}
