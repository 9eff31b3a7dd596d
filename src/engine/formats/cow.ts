// User-Mode Linux COW files (uml_mkcow; qemu's long-removed "cow" driver), read-only: a big-endian
// header naming the backing file, a bitmap with one bit per sector (LSB first), then the sectors the COW
// file holds; other sectors read from the backing file. Layout: UML arch/um/drivers/cow_user.c (v2, v3).

import type { BlockDevice, ImageInfo } from '../block-device.ts';
import { ImageFormatError, UnsupportedError } from '../errors.ts';
import { cString, readExact, u64be, viewOf } from './common/binary.ts';
import { MappedDevice, type RangeMapping, reportBackingName } from './common/mapped-device.ts';
import type { FormatDriver, OpenContext } from './driver.ts';

export const COW_MAGIC = 0x4f4f4f4d; // "OOOM"
const PATH_BYTES_V2 = 4096;
const PATH_BYTES_V3 = 4096;
/** Packed header sizes: v2 = magic, version, path, mtime, size, sectorsize; v3 adds alignment, format. */
export const COW_HEADER_V2_BYTES = 4 + 4 + PATH_BYTES_V2 + 4 + 8 + 4;
export const COW_HEADER_V3_BYTES = 4 + 4 + 4 + 8 + 4 + 4 + 4 + PATH_BYTES_V3;
const COW_FORMAT_BITMAP = 0;
/** Bitmaps are read whole; 64 MiB covers 512 Mi sectors (256 GiB at 512-byte sectors). */
const MAX_BITMAP_BYTES = 64 * 1024 * 1024;

export interface CowHeader {
  version: 2 | 3;
  backingFile: string;
  mtimeSeconds: number;
  sizeBytes: number;
  sectorBytes: number;
  alignmentBytes: number;
  bitmapOffsetBytes: number;
  bitmapBytes: number;
  dataOffsetBytes: number;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** Scores 100 for a v2 or v3 UML COW header. */
export function probeCow(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const view = viewOf(head);
  const version = view.getUint32(4, false);
  return view.getUint32(0, false) === COW_MAGIC && (version === 2 || version === 3) ? 100 : 0;
}

/** Parses a v2/v3 header and derives the bitmap and data offsets as UML's cow_sizes() does. */
export function parseCowHeader(bytes: Uint8Array, file: string): CowHeader {
  const view = viewOf(bytes);
  if (bytes.length < 8 || view.getUint32(0, false) !== COW_MAGIC)
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in UML COW format' });
  const version = view.getUint32(4, false);
  let header: Omit<CowHeader, 'bitmapBytes' | 'dataOffsetBytes'>;
  if (version === 2) {
    if (bytes.length < COW_HEADER_V2_BYTES)
      throw new ImageFormatError({ file, offsetBytes: 0, message: 'UML COW v2 header truncated' });
    const sectorBytes = view.getInt32(8 + PATH_BYTES_V2 + 12, false);
    header = {
      version: 2,
      backingFile: cString(bytes, 8, PATH_BYTES_V2),
      mtimeSeconds: view.getUint32(8 + PATH_BYTES_V2, false),
      sizeBytes: u64be(bytes, 8 + PATH_BYTES_V2 + 4, file),
      sectorBytes,
      alignmentBytes: sectorBytes,
      bitmapOffsetBytes: COW_HEADER_V2_BYTES,
    };
  } else if (version === 3) {
    if (bytes.length < COW_HEADER_V3_BYTES)
      throw new ImageFormatError({ file, offsetBytes: 0, message: 'UML COW v3 header truncated' });
    const alignmentBytes = view.getUint32(28, false);
    const format = view.getUint32(32, false);
    if (format !== COW_FORMAT_BITMAP)
      throw new UnsupportedError({
        format: 'cow',
        feature: `cow_format ${format}`,
        message: `${file}: UML COW format ${format} is not supported (only the bitmap format)`,
      });
    if (alignmentBytes === 0 || alignmentBytes > 1 << 20)
      throw new ImageFormatError({
        file,
        offsetBytes: 28,
        message: `UML COW alignment ${alignmentBytes} is out of range`,
      });
    header = {
      version: 3,
      backingFile: cString(bytes, 36, PATH_BYTES_V3),
      mtimeSeconds: view.getUint32(8, false),
      sizeBytes: u64be(bytes, 12, file),
      sectorBytes: view.getUint32(20, false),
      alignmentBytes,
      bitmapOffsetBytes: roundUp(COW_HEADER_V3_BYTES, alignmentBytes),
    };
  } else {
    throw new UnsupportedError({
      format: 'cow',
      feature: `version ${version}`,
      message: `${file}: UML COW version ${version} is not supported (2 and 3 are)`,
    });
  }
  if (
    header.sectorBytes < 512 ||
    header.sectorBytes > 1 << 20 ||
    (header.sectorBytes & (header.sectorBytes - 1)) !== 0
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: version === 2 ? 8 + PATH_BYTES_V2 + 12 : 20,
      message: `UML COW sector size ${header.sectorBytes} is invalid`,
    });
  }
  const bitmapBytes = Math.ceil(header.sizeBytes / (8 * header.sectorBytes));
  if (bitmapBytes > MAX_BITMAP_BYTES) {
    throw new ImageFormatError({
      file,
      offsetBytes: version === 2 ? 8 + PATH_BYTES_V2 + 4 : 12,
      message: `UML COW size ${header.sizeBytes} needs a ${bitmapBytes}-byte bitmap (limit ${MAX_BITMAP_BYTES})`,
    });
  }
  return {
    ...header,
    bitmapBytes,
    dataOffsetBytes: roundUp(header.bitmapOffsetBytes + bitmapBytes, header.alignmentBytes),
  };
}

class CowDevice extends MappedDevice {
  private readonly header: CowHeader;
  private readonly bitmap: Uint8Array;

  constructor(context: OpenContext, header: CowHeader, bitmap: Uint8Array, backing: BlockDevice | undefined) {
    super({
      formatName: 'cow',
      path: context.path,
      file: context.file,
      sizeBytes: header.sizeBytes,
      isReadOnly: true,
      backing,
    });
    this.header = header;
    this.bitmap = bitmap;
  }

  private isStored(sector: number): boolean {
    return (((this.bitmap[sector >> 3] ?? 0) >> (sector & 7)) & 1) === 1;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const sectorBytes = this.header.sectorBytes;
    const first = Math.floor(offsetBytes / sectorBytes);
    const stored = this.isStored(first);
    // Extend over following sectors in the same state (bounded by the request and 64 Ki sectors).
    let end = (first + 1) * sectorBytes;
    const limit = Math.min(offsetBytes + maxLengthBytes, (first + 65536) * sectorBytes);
    while (end < limit && this.isStored(end / sectorBytes) === stored) end += sectorBytes;
    const lengthBytes = end - offsetBytes;
    if (!stored) return { kind: 'unallocated', lengthBytes };
    return { kind: 'data', lengthBytes, hostOffsetBytes: this.header.dataOffsetBytes + offsetBytes };
  }

  override async info(): Promise<ImageInfo> {
    const info: ImageInfo = {
      ...(await super.info()),
    };
    // An empty name field means no backing file.
    reportBackingName(info, this.header.backingFile || undefined);
    return info;
  }
}

async function openCow(context: OpenContext): Promise<BlockDevice> {
  const head = new Uint8Array(COW_HEADER_V3_BYTES);
  await context.file.read(0, head);
  const header = parseCowHeader(head, context.path);
  const bitmap = await readExact(
    context.file,
    header.bitmapOffsetBytes,
    header.bitmapBytes,
    'UML COW bitmap',
  );
  const backing =
    header.backingFile && context.openBacking
      ? await context.openBacking(header.backingFile, undefined)
      : undefined;
  return new CowDevice(context, header, bitmap, backing);
}

export const cowDriver = {
  name: 'cow',
  description: 'User-Mode Linux COW file (read-only; qemu dropped this format)',
  probe: (head: Uint8Array) => probeCow(head),
  capabilities: {
    create: false,
    write: false,
    backing: true,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'none',
    concurrentWrites: false,
  },
  createOptions: [],
  open: openCow,
} satisfies FormatDriver;
