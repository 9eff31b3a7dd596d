// The vdi driver: VirtualBox dynamic and static images read, written, created and checked as qemu 7.2
// does (block/vdi.c). Guest 1 MiB blocks map through the block map (u32 per block: a data block index,
// or unallocated/discarded); new blocks are appended at offset_data + blocks_allocated * block size.

import { randomUUID } from '../../lazy-crypto.ts';
import type { BlockDevice, ImageInfo, WriteOptions } from '../../block-device.ts';
import { CorruptImageError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { checkTableSize, readExact } from '../common/binary.ts';
import { MappedDevice, type RangeMapping } from '../common/mapped-device.ts';
import { WriteLock } from '../common/write-lock.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import type {
  CheckIssue,
  CheckReport,
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  MeasureInput,
  MeasureResult,
  OpenContext,
  RepairMode,
} from '../driver.ts';
import {
  buildVdiHeader,
  hasVdiSignature,
  parseVdiHeader,
  VDI_BLOCK_BYTES,
  VDI_BLOCKS_ALLOCATED_AT,
  VDI_BLOCKS_IN_IMAGE_AT,
  VDI_DISCARDED,
  VDI_DISK_SIZE_AT,
  VDI_HEADER_BYTES,
  VDI_MAX_BLOCKS,
  VDI_SECTOR_BYTES,
  VDI_TEXT,
  VDI_TYPE_DYNAMIC,
  VDI_TYPE_STATIC,
  VDI_UNALLOCATED,
  VDI_VERSION_1_1,
  type VdiHeader,
} from './header.ts';

/** Largest block map vdisk loads: 64 Mi blocks (64 TiB of guest space), 256 MiB of map. */
const MAX_BMAP_BYTES = 256 * 1024 * 1024;

/** Most blocks one joined lookup covers (bounds the work of one read or block-status step). */
const MAX_RUN_BLOCKS = 65536;

const isAllocated = (entry: number): boolean => entry < VDI_DISCARDED;

async function loadBmap(
  file: HostFile,
  path: string,
  header: VdiHeader,
  fileSizeBytes: number,
): Promise<Uint32Array> {
  const bmapBytes = header.blocksInImage * 4;
  checkTableSize({
    file: path,
    what: 'block map',
    offsetBytes: header.offsetBmapBytes,
    lengthBytes: bmapBytes,
    maxBytes: MAX_BMAP_BYTES,
    fileSizeBytes,
  });
  const raw = await readExact(file, header.offsetBmapBytes, bmapBytes, 'block map');
  const bmap = new Uint32Array(header.blocksInImage);
  for (let i = 0; i < bmap.length; i++) bmap[i] = raw.readUInt32LE(i * 4);
  return bmap;
}

class VdiDevice extends MappedDevice {
  private readonly header: VdiHeader;
  private bmap: Uint32Array;
  /** End of the data area as the file stood at open, plus what we appended since. */
  private fileEndBytes: number;
  /** Block map entries [dirtyFirst, dirtyEnd) changed in memory since the last flush. */
  private dirtyFirst = Number.POSITIVE_INFINITY;
  private dirtyEnd = 0;

  constructor(context: OpenContext, header: VdiHeader, bmap: Uint32Array, fileSizeBytes: number) {
    super({
      formatName: 'vdi',
      path: context.path,
      file: context.file,
      sizeBytes: header.diskSizeBytes,
      isReadOnly: context.readOnly,
    });
    this.header = header;
    this.bmap = bmap;
    this.fileEndBytes = fileSizeBytes;
  }

  protected async mapRange(
    offsetBytes: number,
    maxLengthBytes: number,
    joinRuns = false,
  ): Promise<RangeMapping> {
    const blockIndex = Math.floor(offsetBytes / VDI_BLOCK_BYTES);
    const inBlockBytes = offsetBytes - blockIndex * VDI_BLOCK_BYTES;
    const lengthBytes = Math.min(maxLengthBytes, VDI_BLOCK_BYTES - inBlockBytes);
    const entry = this.bmap[blockIndex] ?? VDI_UNALLOCATED;
    // With joinRuns, following blocks of the same kind join the answer (data ones only where they sit
    // right after this one in the file), so a convert reads them with one pread.
    const runBytes = (sameKind: (next: number, step: number) => boolean): number => {
      let run = lengthBytes;
      for (
        let step = 1;
        joinRuns &&
        run < maxLengthBytes &&
        step < MAX_RUN_BLOCKS &&
        blockIndex + step < this.bmap.length &&
        sameKind(this.bmap[blockIndex + step]!, step);
        step++
      )
        run = Math.min(maxLengthBytes, run + VDI_BLOCK_BYTES);
      return run;
    };
    if (!isAllocated(entry))
      return { kind: 'unallocated', lengthBytes: runBytes((next) => !isAllocated(next)) };
    const hostBlockBytes = this.header.offsetDataBytes + entry * VDI_BLOCK_BYTES;
    if (hostBlockBytes >= this.fileEndBytes) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: this.header.offsetBmapBytes + blockIndex * 4,
        lengthBytes: 4,
        message: `block map entry ${blockIndex} points at data block ${entry}, past the end of the file (${this.fileEndBytes} bytes)`,
      });
    }
    return {
      kind: 'data',
      lengthBytes: runBytes(
        (next, step) =>
          next === entry + step && this.header.offsetDataBytes + next * VDI_BLOCK_BYTES < this.fileEndBytes,
      ),
      hostOffsetBytes: hostBlockBytes + inBlockBytes,
    };
  }

  private readonly writeLock = new WriteLock();

  /** Writes one at a time: concurrent writes to one unallocated block must not both allocate it. */
  override write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.writeLock.run(() => super.write(offsetBytes, data, options));
  }

  protected override allocationUnitBytes(): number {
    return VDI_BLOCK_BYTES;
  }

  /** New blocks are appended one after another (reserveUnit), so a run of them is written at once. */
  protected override reservesContiguousUnits(): boolean {
    return true;
  }

  protected override async reserveUnit(_unitIndex: number): Promise<number> {
    const hostBytes = this.header.offsetDataBytes + this.header.blocksAllocated * VDI_BLOCK_BYTES;
    if (this.header.blocksAllocated >= VDI_MAX_BLOCKS) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: VDI_BLOCKS_ALLOCATED_AT,
        message: 'no free data block index left',
      });
    }
    this.header.blocksAllocated++;
    const endBytes = hostBytes + VDI_BLOCK_BYTES;
    if (this.fileEndBytes > hostBytes) {
      // Bytes already sit there (trailing garbage): the reserved block must read as zeros.
      const zeros = Buffer.alloc(VDI_BLOCK_BYTES);
      await this.file.write(hostBytes, zeros);
    }
    // Past the end the file is not extended here: those bytes read as zeros, and flushMetadata sizes
    // the file before any map entry names the block.
    this.fileEndBytes = Math.max(this.fileEndBytes, endBytes);
    return hostBytes;
  }

  /**
   * Points the block map at a new block in memory only; the map entries and the header's count reach
   * the file at the next flush (see flushMetadata), so a convert makes two small writes per flush
   * instead of per 1 MiB block. Unflushed writes may be lost in a crash, which the contract allows.
   */
  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    this.bmap[unitIndex] = (hostOffsetBytes - this.header.offsetDataBytes) / VDI_BLOCK_BYTES;
    this.dirtyFirst = Math.min(this.dirtyFirst, unitIndex);
    this.dirtyEnd = Math.max(this.dirtyEnd, unitIndex + 1);
  }

  /**
   * Writes the block map entries changed since the last flush, after sizing the file and a sync: a map
   * entry never reaches the disk before its block's data and length. The header's count goes first, as qemu orders them: a
   * crash between the two leaves a count too high, which check reports, never an entry without its block.
   */
  protected override async flushMetadata(): Promise<void> {
    if (this.dirtyEnd <= this.dirtyFirst) return;
    if ((await this.file.sizeBytes()) < this.fileEndBytes) await this.file.truncate(this.fileEndBytes);
    await this.file.sync();
    const count = Buffer.alloc(4);
    count.writeUInt32LE(this.header.blocksAllocated, 0);
    await this.file.write(VDI_BLOCKS_ALLOCATED_AT, count);
    const entries = Buffer.alloc((this.dirtyEnd - this.dirtyFirst) * 4);
    for (let index = this.dirtyFirst; index < this.dirtyEnd; index++)
      entries.writeUInt32LE(this.bmap[index] ?? VDI_UNALLOCATED, (index - this.dirtyFirst) * 4);
    await this.file.write(this.header.offsetBmapBytes + this.dirtyFirst * 4, entries);
    this.dirtyFirst = Number.POSITIVE_INFINITY;
    this.dirtyEnd = 0;
  }

  override async info(): Promise<ImageInfo> {
    return {
      ...(await super.info()),
      clusterSizeBytes: VDI_BLOCK_BYTES,
    };
  }

  /**
   * Grows the guest size in place when the block map's reserved space (offset_bmap .. offset_data) has
   * room for the new blocks (beyond qemu 7.2, which cannot resize VDI). Throws UnsupportedError otherwise.
   */
  async resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    if (this.isReadOnly)
      throw new UnsupportedError({ format: 'vdi', feature: 'resize of a read-only image' });
    // The map grows in the file from its on-disk state: entries still only in memory go first.
    await this.flush();
    const newSizeBytes = Math.ceil(sizeBytes / VDI_SECTOR_BYTES) * VDI_SECTOR_BYTES;
    if (newSizeBytes < this.sizeBytes) {
      throw new UnsupportedError({
        format: 'vdi',
        feature: options.shrink ? 'shrinking' : 'shrinking (and --shrink was not given)',
      });
    }
    const blocks = Math.ceil(newSizeBytes / VDI_BLOCK_BYTES);
    if (blocks > this.header.blocksInImage) {
      const roomBytes = this.header.offsetDataBytes - this.header.offsetBmapBytes;
      if (blocks * 4 > roomBytes || blocks > VDI_MAX_BLOCKS) {
        throw new UnsupportedError({
          format: 'vdi',
          feature: 'growing past the block map',
          message: `${this.path}: the block map has room for ${Math.floor(roomBytes / 4)} blocks; ${blocks} are needed (convert to a new image instead)`,
        });
      }
      const fresh = Buffer.alloc((blocks - this.header.blocksInImage) * 4, 0xff);
      await this.file.write(this.header.offsetBmapBytes + this.header.blocksInImage * 4, fresh);
      const grown = new Uint32Array(blocks).fill(VDI_UNALLOCATED);
      grown.set(this.bmap);
      this.bmap = grown;
      this.header.blocksInImage = blocks;
      const count = Buffer.alloc(4);
      count.writeUInt32LE(blocks, 0);
      await this.file.write(VDI_BLOCKS_IN_IMAGE_AT, count);
    }
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(BigInt(newSizeBytes), 0);
    await this.file.write(VDI_DISK_SIZE_AT, size);
    this.header.diskSizeBytes = newSizeBytes;
    this.currentSizeBytes = newSizeBytes;
    await this.file.sync();
  }
}

async function openVdi(context: OpenContext): Promise<BlockDevice> {
  const fileSizeBytes = await context.file.sizeBytes();
  const headerBytes = Buffer.alloc(VDI_HEADER_BYTES);
  await context.file.read(0, headerBytes);
  const header = parseVdiHeader(
    headerBytes.subarray(0, Math.min(VDI_HEADER_BYTES, fileSizeBytes)),
    context.path,
  );
  const bmap = await loadBmap(context.file, context.path, header, fileSizeBytes);
  return new VdiDevice(context, header, bmap, fileSizeBytes);
}

function parseBool(options: Record<string, string>, name: string): boolean {
  const value = options[name];
  if (value === undefined || value === 'off' || value === 'false') return false;
  if (value === 'on' || value === 'true') return true;
  throw new InvalidOptionError({ option: name, value, message: `Parameter '${name}' expects 'on' or 'off'` });
}

function layoutFor(sizeBytes: number): { diskSizeBytes: number; blocks: number; bmapBytes: number } {
  const diskSizeBytes = Math.ceil(sizeBytes / VDI_SECTOR_BYTES) * VDI_SECTOR_BYTES;
  const blocks = Math.ceil(diskSizeBytes / VDI_BLOCK_BYTES);
  if (blocks > VDI_MAX_BLOCKS) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: `Unsupported VDI image size (size is 0x${sizeBytes.toString(16)}, max supported is 0x${(VDI_MAX_BLOCKS * VDI_BLOCK_BYTES).toString(16)})`,
    });
  }
  const bmapBytes = Math.ceil((blocks * 4) / VDI_SECTOR_BYTES) * VDI_SECTOR_BYTES;
  return { diskSizeBytes, blocks, bmapBytes };
}

const uuidBytes = (): Buffer => Buffer.from(randomUUID().replace(/-/g, ''), 'hex');

async function createVdi(context: CreateContext): Promise<void> {
  if (context.backingFile) throw new UnsupportedError({ format: 'vdi', feature: 'backing file' });
  const isStatic = parseBool(context.options, 'static');
  const { diskSizeBytes, blocks, bmapBytes } = layoutFor(context.sizeBytes);
  const offsetDataBytes = VDI_HEADER_BYTES + bmapBytes;
  const header: VdiHeader = {
    text: VDI_TEXT,
    version: VDI_VERSION_1_1,
    headerSizeBytes: 0x180,
    imageType: isStatic ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC,
    imageFlags: 0,
    offsetBmapBytes: VDI_HEADER_BYTES,
    offsetDataBytes,
    sectorSizeBytes: VDI_SECTOR_BYTES,
    diskSizeBytes,
    blockSizeBytes: VDI_BLOCK_BYTES,
    blockExtraBytes: 0,
    blocksInImage: blocks,
    blocksAllocated: isStatic ? blocks : 0,
    uuidImage: uuidBytes(),
    uuidLastSnap: uuidBytes(),
    uuidLink: new Uint8Array(16),
    uuidParent: new Uint8Array(16),
  };
  const { file } = context;
  await file.write(0, buildVdiHeader(header));
  // The map is written in bounded chunks: entry i = i for static images, unallocated otherwise.
  const chunkEntries = 256 * 1024;
  for (let first = 0; first < bmapBytes / 4; first += chunkEntries) {
    const count = Math.min(chunkEntries, bmapBytes / 4 - first);
    const chunk = Buffer.alloc(count * 4);
    for (let i = 0; i < count; i++) {
      const block = first + i;
      chunk.writeUInt32LE(block >= blocks ? 0 : isStatic ? block : VDI_UNALLOCATED, i * 4);
    }
    await file.write(VDI_HEADER_BYTES + first * 4, chunk);
  }
  await file.truncate(isStatic ? offsetDataBytes + blocks * VDI_BLOCK_BYTES : offsetDataBytes);
  await file.sync();
}

/** qemu's vdi_co_check: every map entry inside blocks_allocated, no data block used twice, counts agree. */
async function checkVdi(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  const fileSizeBytes = await context.file.sizeBytes();
  const headerBytes = await readExact(context.file, 0, VDI_HEADER_BYTES, 'VDI header');
  const header = parseVdiHeader(headerBytes, context.path);
  const bmap = await loadBmap(context.file, context.path, header, fileSizeBytes);
  const issues: CheckIssue[] = [];
  if (repair !== 'none') {
    throw new UnsupportedError({
      format: 'vdi',
      feature: 'check repair',
      message: 'Repairing VDI images is not supported (as in qemu-img)',
    });
  }
  // One bit per data block index; blocks_allocated is bounded by the map's size check above.
  const usedBy = new Int32Array(Math.min(header.blocksAllocated, header.blocksInImage)).fill(-1);
  let allocatedCount = 0;
  for (let block = 0; block < bmap.length; block++) {
    const entry = bmap[block]!;
    if (!isAllocated(entry)) continue;
    const at = header.offsetBmapBytes + block * 4;
    if (entry >= usedBy.length) {
      issues.push({
        code: 'corruption',
        message: `ERROR: block index ${block} too large, is ${entry}`,
        offsetBytes: at,
        lengthBytes: 4,
        fixable: false,
      });
      continue;
    }
    // Entries inside blocks_allocated are counted, duplicates included, as qemu counts them.
    allocatedCount++;
    if (usedBy[entry] !== -1) {
      issues.push({
        code: 'corruption',
        message: `ERROR: block index ${usedBy[entry]} also used by ${block}`,
        offsetBytes: at,
        lengthBytes: 4,
        fixable: false,
      });
    } else {
      usedBy[entry] = block;
    }
  }
  if (allocatedCount !== header.blocksAllocated) {
    issues.push({
      code: 'corruption',
      message: `ERROR: allocated blocks mismatch, is ${allocatedCount}, should be ${header.blocksAllocated}`,
      offsetBytes: VDI_BLOCKS_ALLOCATED_AT,
      lengthBytes: 4,
      fixable: false,
    });
  }
  return { issues, leaks: 0, corruptions: issues.length, checkErrors: 0, leaksFixed: 0, corruptionsFixed: 0 };
}

async function measureVdi(input: MeasureInput): Promise<MeasureResult> {
  const isStatic = parseBool(input.options, 'static');
  const { blocks, bmapBytes } = layoutFor(input.sizeBytes);
  const metadataBytes = VDI_HEADER_BYTES + bmapBytes;
  const fullBytes = metadataBytes + blocks * VDI_BLOCK_BYTES;
  if (isStatic || !input.source)
    return { requiredBytes: isStatic ? fullBytes : metadataBytes, fullyAllocatedBytes: fullBytes };
  let allocatedBlocks = 0;
  await forEachStoredUnit(input.source, VDI_BLOCK_BYTES, (block) => {
    if (block < blocks) allocatedBlocks++;
  });
  return { requiredBytes: metadataBytes + allocatedBlocks * VDI_BLOCK_BYTES, fullyAllocatedBytes: fullBytes };
}

const vdiCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'static', type: 'bool', default: false, help: 'VDI static (pre-allocated) image' },
];

export const vdiDriver = {
  name: 'vdi',
  description: 'VirtualBox VDI (dynamic and static)',
  probe: (head: Uint8Array): number => (hasVdiSignature(head) ? 100 : 0),
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
  createOptions: vdiCreateOptions,
  open: openVdi,
  create: createVdi,
  check: checkVdi,
  measure: measureVdi,
} satisfies FormatDriver;
