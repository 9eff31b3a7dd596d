// The raw format: guest byte N is host byte N, no header. Sparse-aware as qemu's file-posix.c is:
// holes are found with SEEK_DATA/SEEK_HOLE, zero writes and discards punch holes, and creation
// follows qemu's preallocation modes (off: sparse with the first block written, falloc, full).
// Probes at 1: raw is the format of last resort, and open.ts guards a probed raw image's sector 0.

import type { BlockDevice, Extent, ImageInfo, WriteZeroesOptions } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import type { HostFile } from '../io/host-file.ts';
import type {
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  MeasureInput,
  MeasureResult,
  OpenContext,
} from './driver.ts';
import { openRawStream, writeRawStream } from './raw-stream.ts';

/** Largest zero write issued at once when the file system can't punch or zero a range. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** qemu's allocate_first_block writes max(page size, 4 KiB) zero bytes so alignment probing finds data. */
const FIRST_BLOCK_BYTES = 4096;
/** qemu's BDRV_SECTOR_SIZE: a raw device's size is a whole number of these. */
const SECTOR_BYTES = 512;
/** One blockStatus call reports at most this many extents; callers loop for the rest. */
const MAX_EXTENTS_PER_CALL = 1024;

const PREALLOCATION_MODES = ['off', 'falloc', 'full'] as const;
type Preallocation = (typeof PREALLOCATION_MODES)[number];

const rawCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  {
    name: 'preallocation',
    type: 'enum',
    values: PREALLOCATION_MODES,
    default: 'off',
    help: 'Preallocation mode (allowed values: off, falloc, full)',
  },
];

let zeroChunk: Uint8Array | undefined;
function zeros(lengthBytes: number): Uint8Array {
  zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
  return zeroChunk.subarray(0, Math.min(lengthBytes, ZERO_CHUNK_BYTES));
}

function roundUpToSector(sizeBytes: number): number {
  return Math.ceil(sizeBytes / SECTOR_BYTES) * SECTOR_BYTES;
}

function parsePreallocation(value: string | undefined): Preallocation {
  const mode = value ?? 'off';
  if (!(PREALLOCATION_MODES as readonly string[]).includes(mode)) {
    throw new InvalidOptionError({
      option: 'preallocation',
      value: mode,
      message: `Invalid parameter '${mode}' for preallocation (raw supports off, falloc, full)`,
    });
  }
  return mode as Preallocation;
}

/** Writes zeros over [offset, offset+length) in bounded chunks (the slow path). */
async function writeZeroBytes(file: HostFile, offsetBytes: number, lengthBytes: number): Promise<void> {
  let done = 0;
  while (done < lengthBytes) {
    const chunk = zeros(lengthBytes - done);
    await file.write(offsetBytes + done, chunk);
    done += chunk.length;
  }
}

/** Extends the file from `fromBytes` to `toBytes` with qemu's preallocation semantics. */
async function growFile(
  file: HostFile,
  fromBytes: number,
  toBytes: number,
  mode: Preallocation,
): Promise<void> {
  if (toBytes <= fromBytes) return;
  if (mode === 'falloc' && file.allocate && (await file.allocate(fromBytes, toBytes - fromBytes))) return;
  if (mode === 'full' || mode === 'falloc') {
    // falloc without fallocate support degrades to writing zeros, as posix_fallocate's emulation does.
    await writeZeroBytes(file, fromBytes, toBytes - fromBytes);
    return;
  }
  await file.truncate(toBytes);
  if (fromBytes === 0) {
    // As qemu's allocate_first_block: a written first block lets later alignment probing see data.
    await file.write(0, zeros(Math.min(toBytes, FIRST_BLOCK_BYTES)));
  }
}

class RawDevice implements BlockDevice {
  readonly isReadOnly: boolean;
  readonly preferredBlockSizeBytes = 512;
  readonly backing = undefined;
  readonly formatName = 'raw';
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;
  private readonly file: HostFile;
  private readonly path: string;
  private currentSizeBytes: number;

  constructor(path: string, file: HostFile, sizeBytes: number, isReadOnly: boolean) {
    this.path = path;
    this.file = file;
    this.currentSizeBytes = sizeBytes;
    this.isReadOnly = isReadOnly;
    // Guest bytes are host bytes: the file's cached-read fast path serves the device unchanged (a
    // short count past EOF leaves the zero-padded tail to read()).
    if (file.readCached) this.readCached = file.readCached.bind(file);
  }

  get sizeBytes(): number {
    return this.currentSizeBytes;
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    const count = await this.file.read(offsetBytes, buffer);
    // Another process may have shortened the file: what is gone reads as zeros, as a hole would.
    if (count < buffer.length) buffer.fill(0, count);
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.file.write(offsetBytes, data);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    if (options?.mayUnmap && this.file.punchHole && (await this.file.punchHole(offsetBytes, lengthBytes)))
      return;
    if (this.file.zeroRange && (await this.file.zeroRange(offsetBytes, lengthBytes))) return;
    if (options?.fastOnly)
      throw new UnsupportedError({
        format: 'raw',
        feature: 'fast zero',
        message: `${this.path}: the file system cannot zero a range quickly`,
      });
    await writeZeroBytes(this.file, offsetBytes, lengthBytes);
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    // A hint: where holes can't be punched the old data stays, which discard allows.
    if (this.file.punchHole) await this.file.punchHole(offsetBytes, lengthBytes);
  }

  flush(): Promise<void> {
    return this.file.sync();
  }

  /** Data runs and holes of the host file; every range is allocated at this layer (raw has no backing). */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const endBytes = offsetBytes + lengthBytes;
    const extent = (start: number, stop: number, isData: boolean): Extent => ({
      offsetBytes: start,
      lengthBytes: stop - start,
      allocated: true,
      zero: !isData,
      data: isData,
      hostOffsetBytes: start,
      hostFile: this.path,
    });
    const { seekData, seekHole } = this.file;
    if (!seekData || !seekHole) return [extent(offsetBytes, endBytes, true)];
    const extents: Extent[] = [];
    let positionBytes = offsetBytes;
    while (positionBytes < endBytes && extents.length < MAX_EXTENTS_PER_CALL) {
      const dataBytes = await seekData.call(this.file, positionBytes);
      if (dataBytes === null || dataBytes >= endBytes) {
        extents.push(extent(positionBytes, endBytes, false));
        break;
      }
      if (dataBytes > positionBytes) extents.push(extent(positionBytes, dataBytes, false));
      const holeBytes = await seekHole.call(this.file, dataBytes);
      // A hole at or before the data start would be a file-system lie; treat the rest as data.
      const stopBytes = holeBytes > dataBytes ? Math.min(holeBytes, endBytes) : endBytes;
      extents.push(extent(dataBytes, stopBytes, true));
      positionBytes = stopBytes;
    }
    return extents;
  }

  async info(): Promise<ImageInfo> {
    return {
      format: 'raw',
      filename: this.path,
      virtualSizeBytes: this.currentSizeBytes,
      actualSizeBytes: this.file.allocatedBytes ? await this.file.allocatedBytes() : undefined,
    };
  }

  async resize(sizeBytes: number, options: { shrink: boolean; preallocation?: string }): Promise<void> {
    const mode = parsePreallocation(options.preallocation);
    if (sizeBytes < this.currentSizeBytes) {
      if (!options.shrink) {
        throw new InvalidOptionError({
          option: 'size',
          value: sizeBytes,
          message: `${this.path}: use the --shrink option to shrink the image`,
        });
      }
      await this.file.truncate(sizeBytes);
    } else {
      await growFile(this.file, this.currentSizeBytes, sizeBytes, mode);
    }
    this.currentSizeBytes = sizeBytes;
  }

  async close(): Promise<void> {
    try {
      if (!this.isReadOnly) await this.file.sync();
    } finally {
      await this.file.close();
    }
  }
}

async function openRaw(context: OpenContext): Promise<BlockDevice> {
  // As qemu: the device is whole sectors; a file's partial last sector is padded with zeros (reads
  // past EOF return zeros, and a write there extends the file).
  const sizeBytes = roundUpToSector(await context.file.sizeBytes());
  return new RawDevice(context.path, context.file, sizeBytes, context.readOnly);
}

async function createRaw(context: CreateContext): Promise<void> {
  if (context.backingFile) {
    throw new UnsupportedError({
      format: 'raw',
      feature: 'backing',
      message: "'raw' does not support backing files",
    });
  }
  const mode = parsePreallocation(context.options.preallocation);
  await growFile(context.file, 0, roundUpToSector(context.sizeBytes), mode);
  await context.file.sync();
}

/** A raw image needs its whole guest size, rounded up to a sector, as qemu's raw_measure says. */
async function measureRaw(input: MeasureInput): Promise<MeasureResult> {
  const requiredBytes = roundUpToSector(input.sizeBytes);
  return { requiredBytes, fullyAllocatedBytes: requiredBytes };
}

export const rawDriver = {
  name: 'raw',
  description: 'Raw disk image: guest bytes at the same host offsets, sparse where the file system allows',
  probe: () => 1,
  capabilities: {
    create: true,
    write: true,
    backing: false,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'grow-shrink',
    concurrentWrites: true,
  },
  createOptions: rawCreateOptions,
  open: openRaw,
  create: createRaw,
  measure: measureRaw,
  writeStream: writeRawStream,
  readStream: openRawStream,
} satisfies FormatDriver;
