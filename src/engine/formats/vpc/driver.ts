// The vpc (VHD) driver: fixed, dynamic and (read-only) differencing disks, created as qemu 7.2 does.
// Dynamic disks map 2 MiB blocks through the BAT; each block is a sector bitmap followed by data, and
// the footer moves to the new end of file whenever a block is appended (VHD spec v1.0, "Dynamic Disk
// Header Format", "Block Allocation Table and Data Blocks"; qemu block/vpc.c).

import { randomUUID } from '../../lazy-crypto.ts';
import type { BlockDevice, ImageInfo, WriteOptions } from '../../block-device.ts';
import { CorruptImageError, ImageFormatError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { checkTableSize, readExact } from '../common/binary.ts';
import { MappedDevice, type RangeMapping } from '../common/mapped-device.ts';
import { WriteLock } from '../common/write-lock.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import type {
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  MeasureInput,
  MeasureResult,
  OpenContext,
} from '../driver.ts';
import {
  buildDynamicHeader,
  buildFooter,
  guestSizeBytes,
  hasFooterCookie,
  parseDynamicHeader,
  parseFooter,
  roundedCreateSize,
  VPC_DYNAMIC_HEADER_BYTES,
  VPC_EPOCH_SECONDS,
  VPC_FOOTER_BYTES,
  VPC_MAX_SECTORS,
  VPC_TYPE_DIFFERENCING,
  VPC_TYPE_DYNAMIC,
  VPC_TYPE_FIXED,
  VPC_UNALLOCATED,
  type VpcFooter,
} from './footer.ts';
import { readParentReference } from './parent.ts';
import { type DynamicState, growVpc } from './resize.ts';

const SECTOR_BYTES = 512;
/** qemu's create block size. */
const DEFAULT_BLOCK_BYTES = 2 * 1024 * 1024;
/** Largest BAT vdisk loads (qemu's own limit is INT_MAX/4 entries; a 2040 GiB disk of 2 MiB blocks needs 1 Mi). */
const MAX_BAT_ENTRIES = 64 * 1024 * 1024;
/** Most blocks one joined lookup covers (bounds the work of one read or block-status step). */
const MAX_RUN_BLOCKS = 65536;
/** Largest block size vdisk accepts (the spec's is 2 MiB; qemu only asks for a power of two). */
const MAX_BLOCK_BYTES = 256 * 1024 * 1024;

interface VpcInit {
  context: OpenContext;
  footer: VpcFooter;
  footerBytes: Buffer;
  sizeBytes: number;
  dynamic: DynamicState | undefined;
  backing: BlockDevice | undefined;
  backingReference: string | undefined;
}

class VpcDevice extends MappedDevice {
  private footer: VpcFooter;
  private footerBytes: Buffer;
  private readonly dynamic: DynamicState | undefined;
  private readonly backingReference: string | undefined;
  /** BAT entries [batDirtyFirst, batDirtyEnd) changed in memory since the last flush. */
  private batDirtyFirst = Number.POSITIVE_INFINITY;
  private batDirtyEnd = 0;
  /** The sector bitmap of a new block (all ones), shared by every allocation. */
  private fullBitmap: Buffer | undefined;
  /** The bitmap write of the block reserved last, still in flight (see reserveUnit). */
  private pendingBitmap: Promise<void> | undefined;

  constructor(init: VpcInit) {
    super({
      formatName: 'vpc',
      path: init.context.path,
      file: init.context.file,
      sizeBytes: init.sizeBytes,
      isReadOnly: init.context.readOnly,
      backing: init.backing,
    });
    this.footer = init.footer;
    this.footerBytes = init.footerBytes;
    this.dynamic = init.dynamic;
    this.backingReference = init.backingReference;
  }

  protected async mapRange(
    offsetBytes: number,
    maxLengthBytes: number,
    joinRuns = false,
  ): Promise<RangeMapping> {
    const dynamic = this.dynamic;
    if (!dynamic) return { kind: 'data', lengthBytes: maxLengthBytes, hostOffsetBytes: offsetBytes };
    const blockIndex = Math.floor(offsetBytes / dynamic.blockSizeBytes);
    const inBlockBytes = offsetBytes - blockIndex * dynamic.blockSizeBytes;
    const lengthBytes = Math.min(maxLengthBytes, dynamic.blockSizeBytes - inBlockBytes);
    const entry = dynamic.bat[blockIndex] ?? VPC_UNALLOCATED;
    if (entry === VPC_UNALLOCATED) {
      // With joinRuns, the unallocated blocks after this one join the answer (block status steps over a
      // sparse region at once). Data blocks never join: a sector bitmap sits between any two.
      let runBytes = lengthBytes;
      for (
        let next = blockIndex + 1;
        joinRuns &&
        runBytes < maxLengthBytes &&
        next - blockIndex < MAX_RUN_BLOCKS &&
        (dynamic.bat[next] ?? VPC_UNALLOCATED) === VPC_UNALLOCATED;
        next++
      )
        runBytes = Math.min(maxLengthBytes, runBytes + dynamic.blockSizeBytes);
      return { kind: 'unallocated', lengthBytes: runBytes };
    }
    const blockStartBytes = entry * SECTOR_BYTES;
    const dataBytes = blockStartBytes + dynamic.bitmapSizeBytes;
    if (this.footer.diskType !== VPC_TYPE_DIFFERENCING) {
      // qemu reads an allocated block's data whatever its sector bitmap says; so do we.
      return { kind: 'data', lengthBytes, hostOffsetBytes: dataBytes + inBlockBytes };
    }
    // Differencing: a clear bitmap bit means "the parent's sector".
    const firstSector = Math.floor(inBlockBytes / SECTOR_BYTES);
    const bitmap = Buffer.alloc(dynamic.bitmapSizeBytes);
    await this.file.read(blockStartBytes, bitmap);
    const bitOf = (sector: number): boolean => (((bitmap[sector >> 3] ?? 0) >> (7 - (sector & 7))) & 1) === 1;
    const state = bitOf(firstSector);
    let runBytes = (firstSector + 1) * SECTOR_BYTES - inBlockBytes;
    for (let sector = firstSector + 1; runBytes < lengthBytes && bitOf(sector) === state; sector++)
      runBytes += SECTOR_BYTES;
    runBytes = Math.min(runBytes, lengthBytes);
    return state
      ? { kind: 'data', lengthBytes: runBytes, hostOffsetBytes: dataBytes + inBlockBytes }
      : { kind: 'unallocated', lengthBytes: runBytes };
  }

  private readonly writeLock = new WriteLock();

  /** Writes one at a time: concurrent writes to one unallocated block must not both allocate it. */
  override write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.writeLock.run(() => super.write(offsetBytes, data, options));
  }

  protected override allocationUnitBytes(): number {
    if (!this.dynamic) return SECTOR_BYTES; // fixed disks never allocate: every range maps to data
    return this.footer.diskType === VPC_TYPE_DYNAMIC ? this.dynamic.blockSizeBytes : 0;
  }

  /**
   * Places a new block at the end: the footer moves past it first, so the file ends in a footer
   * whenever the process stops; then the block's sector bitmap (every bit set, as qemu writes it: the
   * data is authoritative for all its sectors) overwrites the old footer copy while the caller writes
   * the data. commitUnit waits for the bitmap.
   */
  protected override async reserveUnit(_unitIndex: number): Promise<number> {
    const dynamic = this.dynamic!;
    const blockStartBytes = dynamic.freeDataBlockOffsetBytes;
    const nextFreeBytes = blockStartBytes + dynamic.bitmapSizeBytes + dynamic.blockSizeBytes;
    await this.file.write(nextFreeBytes, this.footerBytes);
    dynamic.freeDataBlockOffsetBytes = nextFreeBytes;
    this.fullBitmap ??= Buffer.alloc(dynamic.bitmapSizeBytes, 0xff);
    const bitmapWritten = this.file.write(blockStartBytes, this.fullBitmap);
    // Observed by commitUnit; a block whose data write failed first is never committed.
    bitmapWritten.catch(() => undefined);
    this.pendingBitmap = bitmapWritten;
    return blockStartBytes + dynamic.bitmapSizeBytes;
  }

  /**
   * Points the BAT at a new block in memory only; the entries reach the file at the next flush (see
   * flushMetadata), one write per flush instead of one per 2 MiB block. Unflushed writes may be lost in
   * a crash, which the contract allows: the appended blocks are then leaked, never half named.
   */
  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    const dynamic = this.dynamic!;
    const bitmapWritten = this.pendingBitmap;
    this.pendingBitmap = undefined;
    await bitmapWritten;
    dynamic.bat[unitIndex] = (hostOffsetBytes - dynamic.bitmapSizeBytes) / SECTOR_BYTES;
    this.batDirtyFirst = Math.min(this.batDirtyFirst, unitIndex);
    this.batDirtyEnd = Math.max(this.batDirtyEnd, unitIndex + 1);
  }

  /**
   * Writes the BAT entries changed since the last flush, after a sync: an entry never reaches the disk
   * before its block's bitmap, data and the footer after it.
   */
  protected override async flushMetadata(): Promise<void> {
    const dynamic = this.dynamic;
    if (!dynamic || this.batDirtyEnd <= this.batDirtyFirst) return;
    await this.file.sync();
    const first = this.batDirtyFirst;
    const entries = Buffer.alloc((this.batDirtyEnd - first) * 4);
    for (let index = first; index < this.batDirtyEnd; index++)
      entries.writeUInt32BE(dynamic.bat[index] ?? VPC_UNALLOCATED, (index - first) * 4);
    await this.file.write(dynamic.header.tableOffsetBytes + first * 4, entries);
    this.batDirtyFirst = Number.POSITIVE_INFINITY;
    this.batDirtyEnd = 0;
  }

  /** Grows the guest size (beyond qemu 7.2, which cannot resize VHDs); see resize.ts. */
  async resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    if (this.isReadOnly || this.footer.diskType === VPC_TYPE_DIFFERENCING) {
      throw new UnsupportedError({ format: 'vpc', feature: 'resizing a read-only or differencing image' });
    }
    if (sizeBytes < this.sizeBytes) {
      throw new UnsupportedError({
        format: 'vpc',
        feature: options.shrink ? 'shrinking' : 'shrinking (and --shrink was not given)',
      });
    }
    await this.writeLock.run(async () => {
      // The BAT grows in the file from its on-disk state: entries still only in memory go first.
      await this.flush();
      const grown = await growVpc({
        file: this.file,
        path: this.path,
        footer: this.footer,
        dynamic: this.dynamic,
        currentSizeBytes: this.sizeBytes,
        requestedBytes: sizeBytes,
      });
      this.footer = grown.footer;
      this.footerBytes = grown.footerBytes;
      this.currentSizeBytes = grown.sizeBytes;
    });
  }

  override async info(): Promise<ImageInfo> {
    const info: ImageInfo = {
      ...(await super.info()),
    };
    if (this.dynamic) info.clusterSizeBytes = this.dynamic.blockSizeBytes;
    if (this.backingReference) info.backingFilename = this.backingReference;
    return info;
  }

  /** Footer fields for tests and tools (creator, geometry, type). */
  get vpcFooter(): Readonly<VpcFooter> {
    return this.footer;
  }
}

async function readFooter(
  file: HostFile,
  path: string,
  fileSizeBytes: number,
): Promise<{ footer: VpcFooter; bytes: Buffer }> {
  if (fileSizeBytes < VPC_FOOTER_BYTES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 0,
      message: `invalid VPC image (${fileSizeBytes} bytes, shorter than a footer)`,
    });
  }
  // Dynamic disks keep a copy at offset 0; fixed disks only have the one at the end.
  let offsetBytes = 0;
  let bytes = await readExact(file, 0, VPC_FOOTER_BYTES, 'VHD footer copy');
  if (!hasFooterCookie(bytes)) {
    offsetBytes = fileSizeBytes - VPC_FOOTER_BYTES;
    bytes = await readExact(file, offsetBytes, VPC_FOOTER_BYTES, 'VHD footer');
  }
  return { footer: parseFooter(bytes, path, offsetBytes), bytes };
}

async function loadDynamic(
  file: HostFile,
  path: string,
  footer: VpcFooter,
  sizeBytes: number,
  fileSizeBytes: number,
): Promise<DynamicState> {
  const headerOffsetBytes = footer.dataOffsetBytes;
  if (headerOffsetBytes < 0 || headerOffsetBytes >= fileSizeBytes) {
    throw new CorruptImageError({
      file: path,
      offsetBytes: 16,
      message: `dynamic header offset ${headerOffsetBytes} lies outside the file`,
    });
  }
  // A header cut short by EOF reads as zero-filled, as qemu reads it; its fields are checked below.
  const headerBytes = Buffer.alloc(VPC_DYNAMIC_HEADER_BYTES);
  await file.read(headerOffsetBytes, headerBytes);
  const header = parseDynamicHeader(headerBytes, path, headerOffsetBytes);
  const blockSizeBytes = header.blockSizeBytes;
  if (
    blockSizeBytes < SECTOR_BYTES ||
    (blockSizeBytes & (blockSizeBytes - 1)) !== 0 ||
    blockSizeBytes > MAX_BLOCK_BYTES
  ) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: headerOffsetBytes + 32,
      message: `Invalid block size ${blockSizeBytes}`,
    });
  }
  if (sizeBytes / blockSizeBytes > 0xffffffff) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: headerOffsetBytes + 32,
      message: 'Too many blocks',
    });
  }
  if (header.maxTableEntries * blockSizeBytes < sizeBytes) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: headerOffsetBytes + 28,
      message: 'Page table too small',
    });
  }
  if (header.maxTableEntries > 0x7fffffff / 4 || header.maxTableEntries > MAX_BAT_ENTRIES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: headerOffsetBytes + 28,
      message: `Max Table Entries too large (${header.maxTableEntries})`,
    });
  }
  const batBytes = header.maxTableEntries * 4;
  checkTableSize({
    file: path,
    what: 'BAT',
    offsetBytes: header.tableOffsetBytes,
    lengthBytes: batBytes,
    maxBytes: MAX_BAT_ENTRIES * 4,
    fileSizeBytes,
  });
  const raw = await readExact(file, header.tableOffsetBytes, batBytes, 'BAT');
  const bat = new Uint32Array(header.maxTableEntries);
  const bitmapSizeBytes = Math.ceil(blockSizeBytes / (8 * SECTOR_BYTES) / SECTOR_BYTES) * SECTOR_BYTES;
  let freeDataBlockOffsetBytes =
    Math.ceil((header.tableOffsetBytes + batBytes) / SECTOR_BYTES) * SECTOR_BYTES;
  for (let i = 0; i < bat.length; i++) {
    const entry = raw.readUInt32BE(i * 4);
    bat[i] = entry;
    if (entry === VPC_UNALLOCATED) continue;
    const nextBytes = entry * SECTOR_BYTES + bitmapSizeBytes + blockSizeBytes;
    if (nextBytes > freeDataBlockOffsetBytes) freeDataBlockOffsetBytes = nextBytes;
  }
  if (freeDataBlockOffsetBytes > fileSizeBytes) {
    throw new CorruptImageError({
      file: path,
      offsetBytes: header.tableOffsetBytes,
      lengthBytes: batBytes,
      message: `free_data_block_offset ${freeDataBlockOffsetBytes} points after the end of file (${fileSizeBytes} bytes); the image has been truncated`,
    });
  }
  return { header, bat, blockSizeBytes, bitmapSizeBytes, freeDataBlockOffsetBytes };
}

function forceSizeCalcOption(options: Record<string, string>): 'chs' | 'current_size' | undefined {
  const value = options.force_size_calc;
  if (value === undefined || value === 'none') return undefined;
  if (value === 'chs' || value === 'current_size') return value;
  throw new InvalidOptionError({
    option: 'force_size_calc',
    value,
    message: `Invalid force_size_calc '${value}': expected none, chs or current_size`,
  });
}

async function openVpc(context: OpenContext): Promise<BlockDevice> {
  const { file, path } = context;
  const fileSizeBytes = await file.sizeBytes();
  const { footer, bytes } = await readFooter(file, path, fileSizeBytes);
  const sizeBytes = guestSizeBytes(footer, forceSizeCalcOption(context.options));
  if (sizeBytes > VPC_MAX_SECTORS * SECTOR_BYTES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 48,
      message: `File too large (${sizeBytes} bytes; VHD's limit is 2040 GiB)`,
    });
  }
  if (
    footer.diskType !== VPC_TYPE_FIXED &&
    footer.diskType !== VPC_TYPE_DYNAMIC &&
    footer.diskType !== VPC_TYPE_DIFFERENCING
  ) {
    throw new UnsupportedError({
      format: 'vpc',
      feature: `disk type ${footer.diskType}`,
      message: `${path}: unsupported VHD disk type ${footer.diskType}`,
    });
  }
  let dynamic: DynamicState | undefined;
  let backing: BlockDevice | undefined;
  let backingReference: string | undefined;
  if (footer.diskType !== VPC_TYPE_FIXED) {
    dynamic = await loadDynamic(file, path, footer, sizeBytes, fileSizeBytes);
  }
  if (footer.diskType === VPC_TYPE_DIFFERENCING) {
    if (!context.readOnly) {
      throw new UnsupportedError({
        format: 'vpc',
        feature: 'writing differencing disks',
        message: `${path}: differencing VHDs open read-only in vdisk`,
      });
    }
    backingReference = await readParentReference(file, dynamic!.header, fileSizeBytes);
    if (context.openBacking) backing = await context.openBacking(backingReference, undefined);
  }
  return new VpcDevice({
    context,
    footer,
    footerBytes: bytes,
    sizeBytes,
    dynamic,
    backing,
    backingReference,
  });
}

/** Scores 100 for a footer copy at offset 0 (dynamic disks); fixed disks probe as raw, as in qemu. */
function probeVpc(head: Uint8Array): number {
  return hasFooterCookie(head) ? 100 : 0;
}

function parseBool(options: Record<string, string>, name: string): boolean {
  const value = options[name];
  if (value === undefined || value === 'off' || value === 'false') return false;
  if (value === 'on' || value === 'true') return true;
  throw new InvalidOptionError({ option: name, value, message: `Parameter '${name}' expects 'on' or 'off'` });
}

function subformatOf(options: Record<string, string>): 'dynamic' | 'fixed' {
  const value = options.subformat ?? 'dynamic';
  if (value !== 'dynamic' && value !== 'fixed') {
    throw new InvalidOptionError({
      option: 'subformat',
      value,
      message: `Invalid subformat '${value}': expected dynamic or fixed`,
    });
  }
  return value;
}

function batEntriesFor(totalSectors: number): number {
  return Math.ceil(totalSectors / (DEFAULT_BLOCK_BYTES / SECTOR_BYTES));
}

async function createVpc(context: CreateContext): Promise<void> {
  if (context.backingFile) throw new UnsupportedError({ format: 'vpc', feature: 'backing file' });
  const subformat = subformatOf(context.options);
  const forceSize = parseBool(context.options, 'force_size');
  const geometry = roundedCreateSize(context.sizeBytes, forceSize, context.path);
  const totalBytes = geometry.totalSectors * SECTOR_BYTES;
  const footerRecord: VpcFooter = {
    features: 2,
    version: 0x00010000,
    dataOffsetBytes: subformat === 'dynamic' ? VPC_FOOTER_BYTES : -1,
    timestampSeconds: Math.floor(Date.now() / 1000) - VPC_EPOCH_SECONDS,
    creatorApp: forceSize ? 'qem2' : 'qemu',
    creatorVersion: 0x00050003, // Virtual PC 2007, as qemu writes
    creatorOs: 'Wi2k',
    originalSizeBytes: totalBytes,
    currentSizeBytes: totalBytes,
    cylinders: geometry.cylinders,
    heads: geometry.heads,
    sectorsPerTrack: geometry.sectorsPerTrack,
    diskType: subformat === 'dynamic' ? VPC_TYPE_DYNAMIC : VPC_TYPE_FIXED,
    checksum: 0,
    uuid: Buffer.from(randomUUID().replace(/-/g, ''), 'hex'),
    savedState: 0,
  };
  const footer = buildFooter(footerRecord);
  const { file } = context;
  if (subformat === 'fixed') {
    await file.truncate(totalBytes);
    await file.write(totalBytes, footer);
    await file.sync();
    return;
  }
  // Layout as qemu: footer copy (0), dynamic header (512), BAT (1536), footer after the BAT.
  const entryCount = batEntriesFor(geometry.totalSectors);
  const batBytes = Math.ceil((entryCount * 4) / SECTOR_BYTES) * SECTOR_BYTES;
  const tableOffsetBytes = 3 * SECTOR_BYTES;
  await file.write(0, footer);
  await file.write(VPC_FOOTER_BYTES, buildDynamicHeader(tableOffsetBytes, entryCount, DEFAULT_BLOCK_BYTES));
  const chunk = Buffer.alloc(Math.min(batBytes, 1024 * 1024), 0xff);
  for (let done = 0; done < batBytes; done += chunk.length) {
    await file.write(tableOffsetBytes + done, chunk.subarray(0, Math.min(chunk.length, batBytes - done)));
  }
  await file.write(tableOffsetBytes + batBytes, footer);
  await file.sync();
}

async function measureVpc(input: MeasureInput): Promise<MeasureResult> {
  const subformat = subformatOf(input.options);
  const geometry = roundedCreateSize(input.sizeBytes, parseBool(input.options, 'force_size'), 'measure');
  const totalBytes = geometry.totalSectors * SECTOR_BYTES;
  if (subformat === 'fixed')
    return {
      requiredBytes: totalBytes + VPC_FOOTER_BYTES,
      fullyAllocatedBytes: totalBytes + VPC_FOOTER_BYTES,
    };
  const entryCount = batEntriesFor(geometry.totalSectors);
  const metadataBytes =
    3 * SECTOR_BYTES + Math.ceil((entryCount * 4) / SECTOR_BYTES) * SECTOR_BYTES + VPC_FOOTER_BYTES;
  const perBlockBytes = SECTOR_BYTES + DEFAULT_BLOCK_BYTES;
  // Without a source (--size) the image would be empty: metadata only, as qemu measures qcow2.
  let allocatedBlocks = 0;
  if (input.source) {
    await forEachStoredUnit(input.source, DEFAULT_BLOCK_BYTES, (block) => {
      if (block < entryCount) allocatedBlocks++;
    });
  }
  return {
    requiredBytes: metadataBytes + allocatedBlocks * perBlockBytes,
    fullyAllocatedBytes: metadataBytes + entryCount * perBlockBytes,
  };
}

const vpcCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  {
    name: 'subformat',
    type: 'enum',
    values: ['dynamic', 'fixed'],
    default: 'dynamic',
    help: 'Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed}',
  },
  {
    name: 'force_size',
    type: 'bool',
    default: false,
    help: 'Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation',
  },
];

export const vpcDriver = {
  name: 'vpc',
  description: 'Microsoft Virtual PC / Hyper-V VHD (fixed, dynamic; differencing read-only)',
  probe: probeVpc,
  capabilities: {
    create: true,
    write: true,
    backing: true,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'grow',
    concurrentWrites: false,
  },
  createOptions: vpcCreateOptions,
  open: openVpc,
  create: createVpc,
  measure: measureVpc,
} satisfies FormatDriver;
