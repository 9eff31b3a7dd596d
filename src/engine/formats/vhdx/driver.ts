// VHDX: open (with log replay: on disk when writable, in memory when read-only), read, write, create
// (dynamic/fixed, block_size, log_size, block_state_zero) and check; ends with the driver record.
// Spec: MS-VHDX v20160714 sections 2.1-2.6; behaviour (defaults, refusals) as qemu 7.2's block/vhdx.c.

import type { BlockDevice, ImageInfo, WriteOptions } from '../../block-device.ts';
import { CorruptImageError, ImageFormatError, PermissionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { readExact, setU64le, viewOf } from '../common/binary.ts';
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
import {
  batEntryCount,
  chunkRatio,
  currentHeader,
  encodeMetadata,
  encodeRegionTable,
  encodeVhdxHeader,
  GUID_BAT,
  GUID_METADATA,
  MiB,
  newGuid,
  PAYLOAD_FULLY_PRESENT,
  PAYLOAD_NOT_PRESENT,
  PAYLOAD_PARTIALLY_PRESENT,
  PAYLOAD_UNDEFINED,
  PAYLOAD_UNMAPPED,
  PAYLOAD_UNMAPPED_V095,
  PAYLOAD_ZERO,
  parseMetadata,
  parseRegionTable,
  parseVhdxHeader,
  sameGuid,
  VHDX_FILE_SIGNATURE,
  VHDX_HEADER_BYTES,
  VHDX_HEADER_OFFSETS,
  VHDX_REGION_TABLE_BYTES,
  VHDX_REGION_TABLE_OFFSETS,
  type VhdxHeader,
  type VhdxMetadata,
  type VhdxRegion,
} from './layout.ts';
import {
  applyLogReplay,
  encodeLogEntry,
  type LoggedSector,
  logEntryBytes,
  ReplayedHostFile,
  readLogReplay,
} from './log.ts';
import { measureVhdx, vhdxCreateSettings, vhdxFileLayout } from './measure.ts';
import { growVhdx } from './resize.ts';

/** Limits on regions vdisk reads whole: qemu's BAT is bounded the same way by the image size. */
const MAX_METADATA_REGION_BYTES = 32 * MiB;
const MAX_BAT_BYTES = 512 * MiB;
/** BAT sectors one log entry carries at most (each covers 512 blocks: 4 GiB at 8 MiB blocks). */
const MAX_PENDING_BAT_SECTORS = 64;
/** Most blocks one joined lookup covers (bounds the work of one read or block-status step). */
const MAX_RUN_BLOCKS = 65536;

interface VhdxLayout {
  header: VhdxHeader;
  metadata: VhdxMetadata;
  batRegion: VhdxRegion;
  metadataRegion: VhdxRegion;
  /** The whole region table, in order (resize rewrites it when the BAT moves). */
  regions: VhdxRegion[];
  bat: Uint8Array;
  logReplayedOnOpen: boolean;
}

async function writeHeaders(file: HostFile, header: VhdxHeader): Promise<VhdxHeader> {
  // Both copies, the older slot first, each with a higher sequence number (MS-VHDX 2.2.2.1).
  let latest = header;
  for (const slot of [1 - header.slot, header.slot]) {
    latest = { ...latest, slot, sequenceNumber: latest.sequenceNumber + 1n };
    await file.write(VHDX_HEADER_OFFSETS[slot]!, encodeVhdxHeader(latest));
    await file.sync();
  }
  return latest;
}

/** Reads identifier, headers, log (replayed per `readOnly`), regions, metadata and BAT. */
async function loadLayout(
  context: OpenContext,
  replayMode: 'disk' | 'memory' | 'refuse',
): Promise<{ layout: VhdxLayout; file: HostFile }> {
  let file = context.file;
  const path = context.path;
  const identifier = await readExact(file, 0, 8, 'VHDX file identifier');
  if (Buffer.from(identifier).toString('latin1') !== VHDX_FILE_SIGNATURE) {
    throw new ImageFormatError({ file: path, offsetBytes: 0, message: 'Image not in VHDX format' });
  }
  const copies = [];
  for (let slot = 0; slot < 2; slot++) {
    const bytes = await readExact(file, VHDX_HEADER_OFFSETS[slot]!, VHDX_HEADER_BYTES, 'VHDX header');
    copies.push(parseVhdxHeader(bytes, slot, path));
  }
  let header = currentHeader(copies, path);
  let logReplayedOnOpen = false;
  const replay = await readLogReplay(file, header);
  if (replay) {
    if (replayMode === 'refuse') {
      throw new ImageFormatError({
        file: path,
        offsetBytes: header.logOffsetBytes,
        message:
          "VHDX image contains a log that needs to be replayed; open it read-write or run 'check -r all'",
      });
    }
    if (replayMode === 'disk') {
      await applyLogReplay(file, replay);
      header = await writeHeaders(file, { ...header, logGuid: new Uint8Array(16) });
    } else {
      file = new ReplayedHostFile(file, replay);
    }
    logReplayedOnOpen = true;
  }
  let regions: VhdxRegion[] | undefined;
  for (const at of VHDX_REGION_TABLE_OFFSETS) {
    regions = parseRegionTable(
      await readExact(file, at, VHDX_REGION_TABLE_BYTES, 'VHDX region table'),
      at,
      path,
    );
    if (regions) break;
  }
  if (!regions)
    throw new ImageFormatError({
      file: path,
      offsetBytes: VHDX_REGION_TABLE_OFFSETS[0],
      message: 'No valid VHDX region table found',
    });
  const batRegion = regions.find((region) => sameGuid(region.guid, GUID_BAT));
  const metadataRegion = regions.find((region) => sameGuid(region.guid, GUID_METADATA));
  const unknownRequired = regions.find(
    (region) => region.required && region !== batRegion && region !== metadataRegion,
  );
  if (unknownRequired)
    throw new UnsupportedError({
      format: 'vhdx',
      feature: 'unknown required region',
      message: `${path}: VHDX image has an unknown required region`,
    });
  if (!batRegion || !metadataRegion)
    throw new ImageFormatError({
      file: path,
      offsetBytes: VHDX_REGION_TABLE_OFFSETS[0],
      message: 'VHDX region table lacks the BAT or metadata region',
    });
  const fileSizeBytes = await file.sizeBytes();
  if (
    metadataRegion.lengthBytes > MAX_METADATA_REGION_BYTES ||
    metadataRegion.offsetBytes + metadataRegion.lengthBytes > fileSizeBytes
  ) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: metadataRegion.offsetBytes,
      message: `VHDX metadata region (${metadataRegion.lengthBytes} bytes) is too large or past the end of the file`,
    });
  }
  const metadata = parseMetadata(
    await readExact(file, metadataRegion.offsetBytes, metadataRegion.lengthBytes, 'VHDX metadata region'),
    metadataRegion.offsetBytes,
    path,
  );
  if (metadata.hasParent)
    throw new UnsupportedError({
      format: 'vhdx',
      feature: 'differencing',
      message: `${path}: VHDX differencing images are not supported (as in qemu)`,
    });
  const batBytes = batEntryCount(metadata) * 8;
  if (
    batBytes > batRegion.lengthBytes ||
    batBytes > MAX_BAT_BYTES ||
    batRegion.offsetBytes + batBytes > fileSizeBytes
  ) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: batRegion.offsetBytes,
      message: `VHDX BAT needs ${batBytes} bytes; its region has ${batRegion.lengthBytes} or lies past the end of the file`,
    });
  }
  const bat = await readExact(file, batRegion.offsetBytes, batBytes, 'VHDX BAT');
  return {
    layout: { header, metadata, batRegion, metadataRegion, regions, bat, logReplayedOnOpen },
    file,
  };
}

function batIndexOf(blockIndex: number, metadata: VhdxMetadata): number {
  return blockIndex + Math.floor(blockIndex / chunkRatio(metadata));
}

/** How a payload block's BAT state reads (MS-VHDX 2.5.1.1); undefined for states a guest read refuses. */
function kindOfState(state: number): 'unallocated' | 'zero' | 'data' | undefined {
  switch (state) {
    case PAYLOAD_NOT_PRESENT:
      return 'unallocated';
    case PAYLOAD_UNDEFINED:
    case PAYLOAD_ZERO:
    case PAYLOAD_UNMAPPED:
    case PAYLOAD_UNMAPPED_V095:
      return 'zero';
    case PAYLOAD_FULLY_PRESENT:
      return 'data';
    default:
      return undefined;
  }
}

function batEntry(bat: Uint8Array, index: number): { state: number; offsetBytes: number } {
  const value = viewOf(bat).getBigUint64(index * 8, true);
  return { state: Number(value & 7n), offsetBytes: Number(value >> 20n) * MiB };
}

class VhdxDevice extends MappedDevice {
  private readonly layout: VhdxLayout;
  private readonly blockBytes: number;
  private headersUpdated = false;
  private fileEndBytes: number;
  /** Set once this session has logged a metadata write; cleared (in the headers) at close. */
  private logGuid: Uint8Array | undefined;
  private logSequence = 0n;
  private logHeadBytes = 0;
  /** BAT sectors (offsets within the BAT) changed in memory and not yet logged; see commitUnit. */
  private readonly pendingBatSectors = new Set<number>();

  constructor(context: OpenContext, file: HostFile, layout: VhdxLayout, fileSizeBytes: number) {
    super({
      formatName: 'vhdx',
      path: context.path,
      file,
      sizeBytes: layout.metadata.virtualSizeBytes,
      isReadOnly: context.readOnly,
      preferredBlockSizeBytes: layout.metadata.logicalSectorBytes,
    });
    this.layout = layout;
    this.blockBytes = layout.metadata.blockSizeBytes;
    this.fileEndBytes = fileSizeBytes;
  }

  protected async mapRange(
    offsetBytes: number,
    maxLengthBytes: number,
    joinRuns = false,
  ): Promise<RangeMapping> {
    const blockIndex = Math.floor(offsetBytes / this.blockBytes);
    const inBlock = offsetBytes % this.blockBytes;
    const mapping = this.blockMapping(blockIndex, inBlock);
    if (!joinRuns) return mapping;
    // Following blocks of the same kind join the answer (data ones only where they sit right after this
    // one in the file), so a convert reads them with one pread and block status answers long runs.
    const blockCount = Math.ceil(this.sizeBytes / this.blockBytes);
    let lengthBytes = mapping.lengthBytes;
    for (
      let next = blockIndex + 1;
      lengthBytes < maxLengthBytes && next < blockCount && next - blockIndex < MAX_RUN_BLOCKS;
      next++
    ) {
      const { state, offsetBytes: hostBytes } = batEntry(
        this.layout.bat,
        batIndexOf(next, this.layout.metadata),
      );
      const joins =
        mapping.kind === 'data'
          ? state === PAYLOAD_FULLY_PRESENT &&
            hostBytes === mapping.hostOffsetBytes - inBlock + (next - blockIndex) * this.blockBytes &&
            hostBytes + this.blockBytes <= this.fileEndBytes
          : kindOfState(state) === mapping.kind;
      if (!joins) break;
      lengthBytes += this.blockBytes;
    }
    return { ...mapping, lengthBytes };
  }

  /** What backs block `blockIndex` from `inBlock` bytes in to its end; throws for a bad BAT entry. */
  private blockMapping(blockIndex: number, inBlock: number): RangeMapping {
    const lengthBytes = this.blockBytes - inBlock;
    const batIndex = batIndexOf(blockIndex, this.layout.metadata);
    const { state, offsetBytes: hostBlockBytes } = batEntry(this.layout.bat, batIndex);
    const kind = kindOfState(state);
    if (kind === 'unallocated' || kind === 'zero') return { kind, lengthBytes };
    if (kind === 'data') {
      if (hostBlockBytes < MiB || hostBlockBytes > this.fileEndBytes) {
        throw new CorruptImageError({
          file: this.path,
          offsetBytes: this.layout.batRegion.offsetBytes + batIndex * 8,
          lengthBytes: 8,
          message: `VHDX BAT entry ${batIndex} points to ${hostBlockBytes}, outside the file`,
        });
      }
      return { kind: 'data', lengthBytes, hostOffsetBytes: hostBlockBytes + inBlock };
    }
    if (state === PAYLOAD_PARTIALLY_PRESENT) {
      throw new UnsupportedError({
        format: 'vhdx',
        feature: 'partially present blocks',
        message: `${this.path}: VHDX block ${blockIndex} is partially present (differencing images are not supported)`,
      });
    }
    throw new CorruptImageError({
      file: this.path,
      offsetBytes: this.layout.batRegion.offsetBytes + batIndex * 8,
      lengthBytes: 8,
      message: `VHDX BAT entry ${batIndex} has invalid state ${state}`,
    });
  }

  protected override async writeUnlocked(
    offsetBytes: number,
    data: Uint8Array,
    options?: WriteOptions,
  ): Promise<void> {
    await this.beforeFirstWrite();
    await super.writeUnlocked(offsetBytes, data, options);
  }

  /** New file and data write GUIDs before the first user-visible write (MS-VHDX 2.2.2). */
  private async beforeFirstWrite(): Promise<void> {
    if (this.headersUpdated || this.isReadOnly) return;
    this.headersUpdated = true;
    this.layout.header = await writeHeaders(this.file, {
      ...this.layout.header,
      fileWriteGuid: newGuid(),
      dataWriteGuid: newGuid(),
    });
  }

  protected override allocationUnitBytes(): number {
    return this.blockBytes;
  }

  /** New blocks are appended back to back (reserveUnit; block sizes are whole MiB). */
  protected override reservesContiguousUnits(): boolean {
    return true;
  }

  /**
   * Places a new block at the 1 MiB-aligned end. The file is not extended here: bytes past its end
   * read as zeros, and commitBatSectors sizes the file before any BAT sector names the block.
   */
  protected override async reserveUnit(): Promise<number> {
    const at = Math.ceil(this.fileEndBytes / MiB) * MiB;
    this.fileEndBytes = at + this.blockBytes;
    return at;
  }

  /**
   * Points the BAT at a new block. Only the in-memory BAT changes here: its 4 KiB sector is queued and
   * reaches the file through the log at the next flush (or once enough sectors are queued), so a
   * convert syncs once per flush instead of twice per block. Unflushed writes may be lost in a crash,
   * which the contract allows; the file never names a block whose growth is not durable.
   */
  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    const batIndex = batIndexOf(unitIndex, this.layout.metadata);
    setU64le(viewOf(this.layout.bat), batIndex * 8, hostOffsetBytes + PAYLOAD_FULLY_PRESENT);
    this.pendingBatSectors.add(Math.floor((batIndex * 8) / 4096) * 4096);
    if (this.pendingBatSectors.size >= this.maxPendingBatSectors()) await this.commitBatSectors();
  }

  /** Queued BAT sectors per log entry: what the log holds, at most MAX_PENDING_BAT_SECTORS. */
  private maxPendingBatSectors(): number {
    let count = MAX_PENDING_BAT_SECTORS;
    while (count > 1 && logEntryBytes(count) > this.layout.header.logLengthBytes) count--;
    return count;
  }

  /**
   * Writes the queued BAT sectors (MS-VHDX 2.3): sync first, so the blocks' data and the file's growth
   * are durable before any sector names them, then one log entry (synced) and the sectors in place.
   * A crash before the entry is durable loses only unflushed writes; after it, replay (qemu's or
   * vdisk's) restores every sector of the entry.
   */
  private async commitBatSectors(): Promise<void> {
    if (this.pendingBatSectors.size === 0) return;
    const regionOffsetBytes = this.layout.batRegion.offsetBytes;
    const sectors: LoggedSector[] = [];
    for (const sectorStart of [...this.pendingBatSectors].sort((a, b) => a - b)) {
      const sector = new Uint8Array(4096);
      await this.file.read(regionOffsetBytes + sectorStart, sector);
      sector.set(this.layout.bat.subarray(sectorStart, Math.min(sectorStart + 4096, this.layout.bat.length)));
      sectors.push({ fileOffsetBytes: regionOffsetBytes + sectorStart, sector });
    }
    this.pendingBatSectors.clear();
    if ((await this.file.sizeBytes()) < this.fileEndBytes) await this.file.truncate(this.fileEndBytes);
    await this.file.sync();
    await this.logSectors(sectors);
  }

  protected override async flushMetadata(): Promise<void> {
    await this.commitBatSectors();
  }

  /**
   * Writes metadata sectors so a crash applies all or none of them: one log entry, synced, then the
   * sectors in place (made durable by the next sync; replay covers them until then). A log too small
   * for the entry falls back to in-place writes in the given order, each synced, so callers order
   * `sectors` such that every prefix is a consistent image.
   */
  private async logSectors(sectors: LoggedSector[]): Promise<void> {
    const header = this.layout.header;
    const entryBytes = logEntryBytes(sectors.length);
    if (header.logLengthBytes < entryBytes) {
      await this.file.sync();
      for (const { fileOffsetBytes, sector } of sectors) {
        await this.file.write(fileOffsetBytes, sector);
        await this.file.sync();
      }
      return;
    }
    if (!this.logGuid) {
      // A fresh log GUID per session: entries of earlier sessions no longer match and are never replayed.
      this.logGuid = newGuid();
      this.layout.header = await writeHeaders(this.file, { ...header, logGuid: this.logGuid });
    }
    if (this.logHeadBytes + entryBytes > header.logLengthBytes) this.logHeadBytes = 0;
    this.logSequence++;
    const entry = encodeLogEntry({
      logGuid: this.logGuid,
      sequenceNumber: this.logSequence,
      positionBytes: this.logHeadBytes,
      sectors,
      fileSizeBytes: Math.ceil(this.fileEndBytes / MiB) * MiB,
    });
    await this.file.write(header.logOffsetBytes + this.logHeadBytes, entry);
    await this.file.sync();
    this.logHeadBytes += entryBytes;
    for (const { fileOffsetBytes, sector } of sectors) await this.file.write(fileOffsetBytes, sector);
  }

  /** Grows the guest (beyond qemu 7.2, which cannot resize vhdx); see resize.ts for the write order. */
  resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    return this.exclusive(() => this.resizeUnlocked(sizeBytes, options));
  }

  private async resizeUnlocked(sizeBytes: number, _options: { shrink: boolean }): Promise<void> {
    if (this.isReadOnly)
      throw new PermissionError({ file: this.path, message: 'resize refused: the image is open read-only' });
    if (sizeBytes === this.sizeBytes) return;
    await this.beforeFirstWrite();
    // Growing rewrites BAT sectors from memory: queued ones go first, through the log.
    await this.commitBatSectors();
    const layout = this.layout;
    const grown = await growVhdx({
      file: this.file,
      path: this.path,
      state: { ...layout, fileEndBytes: this.fileEndBytes },
      newSizeBytes: sizeBytes,
      maxBatBytes: MAX_BAT_BYTES,
      commit: (sectors) => this.logSectors(sectors),
    });
    layout.metadata = grown.metadata;
    layout.regions = grown.regions;
    layout.batRegion = grown.batRegion;
    layout.bat = grown.bat;
    this.fileEndBytes = grown.fileEndBytes;
    this.currentSizeBytes = sizeBytes;
  }

  /** Clean close: every logged sector is in place, so the log is emptied (log GUID zeroed). */
  protected override async closeMetadata(): Promise<void> {
    if (this.isReadOnly || !this.logGuid) return;
    await this.file.sync();
    this.layout.header = await writeHeaders(this.file, {
      ...this.layout.header,
      logGuid: new Uint8Array(16),
    });
    this.logGuid = undefined;
  }

  override async info(): Promise<ImageInfo> {
    return {
      ...(await super.info()),
      clusterSizeBytes: this.blockBytes,
      dirty: false,
    };
  }
}

async function openVhdx(context: OpenContext): Promise<BlockDevice> {
  const { layout, file } = await loadLayout(context, context.readOnly ? 'memory' : 'disk');
  return new VhdxDevice(context, file, layout, await file.sizeBytes());
}

/** qemu's vhdx_co_check: a replayed log counts as a fixed corruption; BAT blocks must lie inside the file and not overlap. */
async function checkVhdx(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  const canRepair = repair !== 'none' && !context.readOnly;
  const { layout, file } = await loadLayout(context, canRepair ? 'disk' : 'refuse');
  const fileSizeBytes = await file.sizeBytes();
  const { metadata, bat } = layout;
  const issues: CheckIssue[] = [];
  const blockBytes = metadata.blockSizeBytes;
  const payloadBlocks = Math.ceil(metadata.virtualSizeBytes / blockBytes);
  const seen = new Set<number>();
  for (let block = 0; block < payloadBlocks; block++) {
    const batIndex = batIndexOf(block, metadata);
    const { state, offsetBytes } = batEntry(bat, batIndex);
    if (state !== PAYLOAD_FULLY_PRESENT && state !== PAYLOAD_PARTIALLY_PRESENT) continue;
    const where = {
      offsetBytes: layout.batRegion.offsetBytes + batIndex * 8,
      lengthBytes: 8,
      fixable: false,
    };
    if (offsetBytes + blockBytes > fileSizeBytes) {
      issues.push({
        code: 'corruption',
        message: `VHDX BAT entry ${batIndex} start offset ${offsetBytes} points after end of file (${fileSizeBytes}). Image has probably been truncated.`,
        ...where,
      });
    } else if (seen.has(offsetBytes) || offsetBytes < MiB) {
      issues.push({
        code: 'corruption',
        message: `VHDX BAT entry ${batIndex} overlaps with other metadata or data`,
        ...where,
      });
    }
    seen.add(offsetBytes);
  }
  const corruptionsFixed = layout.logReplayedOnOpen ? 1 : 0;
  if (file !== context.file) await file.close().catch(() => undefined);
  return {
    issues,
    leaks: 0,
    corruptions: issues.length,
    checkErrors: 0,
    leaksFixed: 0,
    corruptionsFixed,
    // No allocation statistics: qemu's vhdx check fills none, and `check` output matches it.
  };
}

async function createVhdx(context: CreateContext): Promise<void> {
  const { options, file } = context;
  const sizeBytes = context.sizeBytes;
  if (context.backingFile !== undefined)
    throw new UnsupportedError({
      format: 'vhdx',
      feature: 'backing files',
      message: 'vhdx does not support backing files',
    });
  const { subformat, logBytes, blockBytes, blockStateZero } = vhdxCreateSettings(options, sizeBytes);
  const metadata: VhdxMetadata = {
    blockSizeBytes: blockBytes,
    leaveBlocksAllocated: subformat === 'fixed',
    hasParent: false,
    virtualSizeBytes: sizeBytes,
    logicalSectorBytes: 512,
    physicalSectorBytes: 4096,
    page83: newGuid(),
  };
  const { logOffsetBytes, metadataOffsetBytes, batOffsetBytes, batRegionBytes, dataOffsetBytes } =
    vhdxFileLayout(metadata, logBytes);
  const entryCount = batEntryCount(metadata);
  const payloadBlocks = Math.ceil(sizeBytes / blockBytes);

  await file.truncate(0);
  const identifier = new Uint8Array(64 * 1024);
  identifier.set(Buffer.from(VHDX_FILE_SIGNATURE, 'latin1'), 0);
  identifier.set(Buffer.from('vdisk 0.1.0', 'utf16le'), 8);
  await file.write(0, identifier);
  const regions: VhdxRegion[] = [
    { guid: GUID_BAT, offsetBytes: batOffsetBytes, lengthBytes: batRegionBytes, required: true },
    { guid: GUID_METADATA, offsetBytes: metadataOffsetBytes, lengthBytes: MiB, required: true },
  ];
  const regionTable = encodeRegionTable(regions);
  for (const at of VHDX_REGION_TABLE_OFFSETS) await file.write(at, regionTable);
  await file.write(metadataOffsetBytes, encodeMetadata(metadata, MiB));
  const bat = new Uint8Array(entryCount * 8);
  const batView = viewOf(bat);
  for (let block = 0; block < payloadBlocks; block++) {
    const index = batIndexOf(block, metadata);
    if (subformat === 'fixed')
      setU64le(batView, index * 8, dataOffsetBytes + block * blockBytes + PAYLOAD_FULLY_PRESENT);
    else if (blockStateZero) setU64le(batView, index * 8, PAYLOAD_ZERO);
  }
  await file.write(batOffsetBytes, bat);
  await file.truncate(subformat === 'fixed' ? dataOffsetBytes + payloadBlocks * blockBytes : dataOffsetBytes);
  const header: VhdxHeader = {
    slot: 1,
    sequenceNumber: 0n,
    fileWriteGuid: newGuid(),
    dataWriteGuid: newGuid(),
    logGuid: new Uint8Array(16),
    logVersion: 0,
    version: 1,
    logLengthBytes: logBytes,
    logOffsetBytes,
  };
  await writeHeaders(file, header);
}

export const vhdxCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size; max of 64TB' },
  { name: 'log_size', type: 'size', help: 'Log size; min 1MB', default: 1048576 },
  {
    name: 'block_size',
    type: 'size',
    help: 'Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.',
    default: 0,
  },
  {
    name: 'subformat',
    type: 'enum',
    values: ['dynamic', 'fixed'],
    help: 'VHDX format type - can be either "dynamic" or "fixed"',
    default: 'dynamic',
  },
  { name: 'block_state_zero', type: 'bool', help: 'Force use of payload blocks of type ZERO', default: true },
];

export const vhdxDriver = {
  name: 'vhdx',
  description: 'Microsoft Hyper-V VHDX',
  probe: (head: Uint8Array) =>
    head.length >= 8 && Buffer.from(head.subarray(0, 8)).toString('latin1') === VHDX_FILE_SIGNATURE ? 100 : 0,
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
  createOptions: vhdxCreateOptions,
  open: openVhdx,
  create: createVhdx,
  check: checkVhdx,
  measure: measureVhdx,
} satisfies FormatDriver;
