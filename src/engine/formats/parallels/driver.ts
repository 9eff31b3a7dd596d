// Parallels (.hds/.hdd) images: open/create/read/write/check on the shared map-based device; ends with
// the driver record. Spec: qemu docs/interop/parallels.txt; behaviour as qemu 7.2's block/parallels.c:
// the `inuse` mark while open read-write, clusters appended at the data end, qemu's check rules.

import type { BlockDevice } from '../../block-device.ts';
import { CorruptImageError, ImageFormatError, InvalidOptionError, PermissionError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { sizeOption } from '../../size.ts';
import { readExact, viewOf } from '../common/binary.ts';
import { MappedDevice, type RangeMapping } from '../common/mapped-device.ts';
import type {
  CheckIssue,
  CheckReport,
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  OpenContext,
  RepairMode,
} from '../driver.ts';
import { measureParallels } from './measure.ts';
import { growParallels } from './resize.ts';
import {
  batEntryOffsetBytes,
  encodeParallelsHeader,
  PARALLELS_HEADER_BYTES,
  PARALLELS_HEADS,
  PARALLELS_INUSE_MAGIC,
  PARALLELS_SECTORS_PER_CYLINDER,
  type ParallelsHeader,
  parallelsMagic,
  parseParallelsHeader,
} from './header.ts';

const SECTOR_BYTES = 512;

interface ParallelsState {
  header: ParallelsHeader;
  bat: Uint32Array;
  /** End of the data area in sectors: where the next cluster goes. */
  dataEndSectors: number;
  fileSizeBytes: number;
}

async function loadState(file: HostFile, path: string): Promise<ParallelsState> {
  const head = await readExact(file, 0, PARALLELS_HEADER_BYTES, 'Parallels header');
  const header = parseParallelsHeader(head, path);
  const fileSizeBytes = await file.sizeBytes();
  const batBytes = header.batEntries * 4;
  if (batEntryOffsetBytes(header.batEntries) > fileSizeBytes) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 32,
      message: `BAT of ${header.batEntries} entries extends past the end of the file`,
    });
  }
  const batRaw = await readExact(file, PARALLELS_HEADER_BYTES, batBytes, 'Parallels BAT');
  const bat = new Uint32Array(header.batEntries);
  const view = viewOf(batRaw);
  for (let i = 0; i < bat.length; i++) bat[i] = view.getUint32(i * 4, true);
  let dataEndSectors =
    header.dataOffsetSectors || Math.ceil(batEntryOffsetBytes(header.batEntries) / SECTOR_BYTES);
  const multiplier = header.isExtended ? header.clusterSectors : 1;
  for (const entry of bat)
    if (entry !== 0) dataEndSectors = Math.max(dataEndSectors, entry * multiplier + header.clusterSectors);
  return { header, bat, dataEndSectors, fileSizeBytes };
}

class ParallelsDevice extends MappedDevice {
  private readonly state: ParallelsState;
  private readonly clusterBytes: number;
  private readonly multiplier: number;

  constructor(context: OpenContext, state: ParallelsState) {
    super({
      formatName: 'parallels',
      path: context.path,
      file: context.file,
      sizeBytes: state.header.totalSectors * SECTOR_BYTES,
      isReadOnly: context.readOnly,
      preferredBlockSizeBytes: 512,
    });
    this.state = state;
    this.clusterBytes = state.header.clusterSectors * SECTOR_BYTES;
    this.multiplier = state.header.isExtended ? state.header.clusterSectors : 1;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const clusterIndex = Math.floor(offsetBytes / this.clusterBytes);
    // Past the BAT (a size larger than the BAT covers) nothing is ever stored.
    if (clusterIndex >= this.state.bat.length) return { kind: 'unallocated', lengthBytes: maxLengthBytes };
    const inCluster = offsetBytes % this.clusterBytes;
    const lengthBytes = this.clusterBytes - inCluster;
    const entry = this.state.bat[clusterIndex] ?? 0;
    if (entry === 0) return { kind: 'unallocated', lengthBytes };
    const hostOffsetBytes = entry * this.multiplier * SECTOR_BYTES;
    if (hostOffsetBytes > this.state.fileSizeBytes) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: batEntryOffsetBytes(clusterIndex),
        lengthBytes: 4,
        message: `BAT entry ${clusterIndex} points to ${hostOffsetBytes}, outside the image`,
      });
    }
    return { kind: 'data', lengthBytes, hostOffsetBytes: hostOffsetBytes + inCluster };
  }

  protected override allocationUnitBytes(): number {
    return this.clusterBytes;
  }

  protected override async reserveUnit(unitIndex: number): Promise<number> {
    if (unitIndex >= this.state.bat.length) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: 32,
        message: `cluster ${unitIndex} is beyond the BAT (${this.state.bat.length} entries)`,
      });
    }
    const startSectors = this.state.dataEndSectors;
    if (startSectors / this.multiplier > 0xffffffff || startSectors % this.multiplier !== 0) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: 48,
        message: 'data area end cannot be expressed in a BAT entry',
      });
    }
    this.state.dataEndSectors += this.state.header.clusterSectors;
    this.state.fileSizeBytes = Math.max(this.state.fileSizeBytes, this.state.dataEndSectors * SECTOR_BYTES);
    await this.file.truncate(this.state.fileSizeBytes);
    return startSectors * SECTOR_BYTES;
  }

  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    const entry = hostOffsetBytes / SECTOR_BYTES / this.multiplier;
    this.state.bat[unitIndex] = entry;
    const bytes = new Uint8Array(4);
    viewOf(bytes).setUint32(0, entry, true);
    await this.file.write(batEntryOffsetBytes(unitIndex), bytes);
  }

  /** Grows the guest (beyond qemu 7.2, which cannot resize parallels); see resize.ts for the write order. */
  resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    return this.exclusive(() => this.resizeUnlocked(sizeBytes, options));
  }

  private async resizeUnlocked(sizeBytes: number, _options: { shrink: boolean }): Promise<void> {
    if (this.isReadOnly)
      throw new PermissionError({ file: this.path, message: 'resize refused: the image is open read-only' });
    if (sizeBytes === this.sizeBytes) return;
    const grown = await growParallels({
      file: this.file,
      path: this.path,
      state: this.state,
      newSizeBytes: sizeBytes,
    });
    this.state.header = grown.header;
    this.state.bat = grown.bat;
    this.state.dataEndSectors = grown.dataEndSectors;
    this.state.fileSizeBytes = grown.fileSizeBytes;
    this.currentSizeBytes = sizeBytes;
  }

  protected override async closeMetadata(): Promise<void> {
    if (this.isReadOnly) return;
    // Clean close: clear the in-use mark (qemu's parallels_close).
    await this.file.write(0, encodeParallelsHeader({ ...this.state.header, inuse: 0 }));
    await this.file.sync();
  }
}

async function openParallels(context: OpenContext): Promise<BlockDevice> {
  const state = await loadState(context.file, context.path);
  if (!context.readOnly) {
    if (state.header.inuse === PARALLELS_INUSE_MAGIC) {
      throw new PermissionError({
        file: context.path,
        message:
          "parallels: Image was not closed correctly; cannot be opened read/write (run 'check -r all')",
      });
    }
    state.header = { ...state.header, inuse: PARALLELS_INUSE_MAGIC };
    await context.file.write(0, encodeParallelsHeader(state.header));
    await context.file.sync();
  }
  return new ParallelsDevice(context, state);
}

/** qemu 7.2's parallels_co_check: unclean mark, clusters outside the file, space leaked after the last cluster. */
async function checkParallels(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  const state = await loadState(context.file, context.path);
  const { header, bat } = state;
  const clusterBytes = header.clusterSectors * SECTOR_BYTES;
  const multiplier = header.isExtended ? header.clusterSectors : 1;
  const fixErrors = repair === 'all' && !context.readOnly;
  const fixLeaks = repair !== 'none' && !context.readOnly;
  const sizeBytes = state.fileSizeBytes;
  const issues: CheckIssue[] = [];
  let corruptionsFixed = 0;
  let allocatedClusters = 0;
  let fragmentedClusters = 0;
  let highOffsetBytes = 0;
  let previousOffsetBytes = 0;
  if (header.inuse === PARALLELS_INUSE_MAGIC) {
    issues.push({
      code: 'corruption',
      message: 'image was not closed correctly',
      offsetBytes: 44,
      lengthBytes: 4,
      fixable: true,
    });
    if (fixErrors) corruptionsFixed++;
  }
  for (let i = 0; i < bat.length; i++) {
    const offsetBytes = (bat[i] ?? 0) * multiplier * SECTOR_BYTES;
    if (offsetBytes === 0) {
      previousOffsetBytes = 0;
      continue;
    }
    if (offsetBytes > sizeBytes) {
      issues.push({
        code: 'corruption',
        message: `cluster ${i} is outside image`,
        offsetBytes: batEntryOffsetBytes(i),
        lengthBytes: 4,
        fixable: true,
      });
      if (fixErrors) {
        bat[i] = 0;
        await context.file.write(batEntryOffsetBytes(i), new Uint8Array(4));
        corruptionsFixed++;
      }
      previousOffsetBytes = 0;
      continue;
    }
    allocatedClusters++;
    highOffsetBytes = Math.max(highOffsetBytes, offsetBytes);
    if (previousOffsetBytes !== 0 && previousOffsetBytes + clusterBytes !== offsetBytes) fragmentedClusters++;
    previousOffsetBytes = offsetBytes;
  }
  const imageEndOffsetBytes = highOffsetBytes + clusterBytes;
  let leaks = 0;
  let leaksFixed = 0;
  if (sizeBytes > imageEndOffsetBytes) {
    leaks = Math.ceil((sizeBytes - imageEndOffsetBytes) / clusterBytes);
    issues.push({
      code: 'leak',
      message: `space leaked at the end of the image ${sizeBytes - imageEndOffsetBytes}`,
      offsetBytes: imageEndOffsetBytes,
      lengthBytes: sizeBytes - imageEndOffsetBytes,
      fixable: true,
    });
    if (fixLeaks) {
      await context.file.truncate(imageEndOffsetBytes);
      leaksFixed = leaks;
    }
  }
  if (fixErrors && header.inuse === PARALLELS_INUSE_MAGIC) {
    await context.file.write(0, encodeParallelsHeader({ ...header, inuse: 0 }));
  }
  if (!context.readOnly) await context.file.sync();
  const corruptionCount = issues.filter((issue) => issue.code === 'corruption').length;
  return {
    issues,
    leaks: leaks - leaksFixed,
    corruptions: corruptionCount - corruptionsFixed,
    checkErrors: 0,
    leaksFixed,
    corruptionsFixed,
    imageEndOffsetBytes,
    totalClusters: bat.length,
    allocatedClusters,
    fragmentedClusters,
    compressedClusters: 0,
  };
}

async function createParallels(context: CreateContext): Promise<void> {
  const clusterBytes = sizeOption(context.options, 'cluster_size', 1024 * 1024);
  const sizeBytes = context.sizeBytes;
  if (clusterBytes < SECTOR_BYTES || clusterBytes % SECTOR_BYTES !== 0) {
    throw new InvalidOptionError({
      option: 'cluster_size',
      value: clusterBytes,
      message: 'Cluster size must be a multiple of 512 bytes',
    });
  }
  if (sizeBytes >= 2 ** 32 * clusterBytes) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: 'Image size is too large for this cluster size',
    });
  }
  if (context.backingFile !== undefined) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: context.backingFile,
      message: 'parallels images do not take a backing file at creation',
    });
  }
  const batEntries = Math.ceil(sizeBytes / clusterBytes);
  const batSectors =
    (Math.ceil(batEntryOffsetBytes(batEntries) / clusterBytes) * clusterBytes) / SECTOR_BYTES;
  const header: ParallelsHeader = {
    isExtended: true,
    heads: PARALLELS_HEADS,
    cylinders: Math.floor(sizeBytes / SECTOR_BYTES / PARALLELS_HEADS / PARALLELS_SECTORS_PER_CYLINDER),
    clusterSectors: clusterBytes / SECTOR_BYTES,
    batEntries,
    totalSectors: Math.ceil(sizeBytes / SECTOR_BYTES),
    inuse: 0,
    dataOffsetSectors: batSectors,
    flags: 0,
    extensionOffset: 0,
  };
  await context.file.truncate(0);
  await context.file.write(0, encodeParallelsHeader(header));
  await context.file.truncate(batSectors * SECTOR_BYTES);
  await context.file.sync();
}

export const parallelsCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'cluster_size', type: 'size', help: 'Parallels image cluster size', default: 1048576 },
];

export const parallelsDriver = {
  name: 'parallels',
  description: 'Parallels disk image',
  probe: (head: Uint8Array) => (parallelsMagic(head) ? 100 : 0),
  capabilities: {
    create: true,
    write: true,
    backing: false,
    internalSnapshots: false,
    check: true,
    compression: [],
    encryption: [],
    resize: 'grow',
    concurrentWrites: false,
  },
  createOptions: parallelsCreateOptions,
  open: openParallels,
  create: createParallels,
  check: checkParallels,
  measure: measureParallels,
} satisfies FormatDriver;
