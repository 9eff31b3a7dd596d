// Bochs "growing" redolog images (bximage), read-only, as qemu's block/bochs.c reads them: a 512-byte
// header, a catalog of u32 extent indexes (0xffffffff = absent), and per extent a sector bitmap
// followed by its sectors. Layout: Bochs iodev/hdimage/hdimage.h (redolog_header_t, versions 1 and 2).

import type { BlockDevice } from '../block-device.ts';
import { ImageFormatError } from '../errors.ts';
import { cString, readExact, u64le, viewOf } from './common/binary.ts';
import { MappedDevice, type RangeMapping, readHostZeroFilled } from './common/mapped-device.ts';
import type { FormatDriver, OpenContext } from './driver.ts';

const BOCHS_MAGIC = 'Bochs Virtual HD Image';
const BOCHS_TYPE_REDOLOG = 'Redolog';
const BOCHS_SUBTYPE_GROWING = 'Growing';
const BOCHS_VERSION_1 = 0x00010000;
const BOCHS_VERSION_2 = 0x00020000;
const BOCHS_HEADER_BYTES = 512;
const SECTOR_BYTES = 512;
const CATALOG_ABSENT = 0xffffffff;
/** qemu's limits: a catalog of at most 256 Ki entries, extents of at most 8 MiB. */
const MAX_CATALOG_ENTRIES = 256 * 1024;
const MAX_EXTENT_BYTES = 0x800000;

interface BochsHeader {
  headerBytes: number;
  catalogEntries: number;
  bitmapBytes: number;
  extentBytes: number;
  diskBytes: number;
}

function isBochsHead(head: Uint8Array): boolean {
  if (head.length < BOCHS_HEADER_BYTES) return false;
  const version = viewOf(head).getUint32(64, true);
  return (
    cString(head, 0, 32) === BOCHS_MAGIC &&
    cString(head, 32, 16) === BOCHS_TYPE_REDOLOG &&
    cString(head, 48, 16) === BOCHS_SUBTYPE_GROWING &&
    (version === BOCHS_VERSION_1 || version === BOCHS_VERSION_2)
  );
}

/** Scores 100 for a Bochs growing redolog header (qemu's bochs_probe), else 0. */
export function probeBochs(head: Uint8Array): number {
  return isBochsHead(head) ? 100 : 0;
}

function parseHeader(head: Uint8Array, file: string): BochsHeader {
  if (!isBochsHead(head))
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in Bochs format' });
  const view = viewOf(head);
  const version = view.getUint32(64, true);
  const header: BochsHeader = {
    headerBytes: view.getUint32(68, true),
    catalogEntries: view.getUint32(72, true),
    bitmapBytes: view.getUint32(76, true),
    extentBytes: view.getUint32(80, true),
    // Version 1 has no timestamp field, so its disk size sits 4 bytes earlier.
    diskBytes: u64le(head, version === BOCHS_VERSION_1 ? 84 : 88, file),
  };
  if (header.catalogEntries > MAX_CATALOG_ENTRIES) {
    throw new ImageFormatError({
      file,
      offsetBytes: 72,
      message: `Catalog size is too large (${header.catalogEntries} entries)`,
    });
  }
  if (header.extentBytes < SECTOR_BYTES) {
    throw new ImageFormatError({
      file,
      offsetBytes: 80,
      message: `Extent size ${header.extentBytes} is too small`,
    });
  }
  if (header.extentBytes > MAX_EXTENT_BYTES) {
    throw new ImageFormatError({
      file,
      offsetBytes: 80,
      message: `Extent size ${header.extentBytes} is too large`,
    });
  }
  if (header.bitmapBytes === 0 || header.headerBytes < BOCHS_HEADER_BYTES) {
    throw new ImageFormatError({ file, offsetBytes: 68, message: 'Invalid header or bitmap size' });
  }
  const sectorsPerExtent = Math.floor(header.extentBytes / SECTOR_BYTES);
  const totalSectors = Math.floor(header.diskBytes / SECTOR_BYTES);
  if (header.catalogEntries < Math.ceil(totalSectors / sectorsPerExtent)) {
    throw new ImageFormatError({
      file,
      offsetBytes: 72,
      message: 'Catalog size is too small for this disk size',
    });
  }
  return header;
}

class BochsDevice extends MappedDevice {
  private readonly header: BochsHeader;
  private readonly catalog: Uint32Array;
  private readonly dataOffsetBytes: number;
  private readonly bitmapSectors: number;
  private readonly extentSectors: number;

  constructor(context: OpenContext, header: BochsHeader, catalog: Uint32Array) {
    super({
      formatName: 'bochs',
      path: context.path,
      file: context.file,
      sizeBytes: Math.floor(header.diskBytes / SECTOR_BYTES) * SECTOR_BYTES,
      isReadOnly: true,
    });
    this.header = header;
    this.catalog = catalog;
    this.dataOffsetBytes = header.headerBytes + header.catalogEntries * 4;
    this.bitmapSectors = Math.ceil(header.bitmapBytes / SECTOR_BYTES);
    this.extentSectors = Math.ceil(header.extentBytes / SECTOR_BYTES);
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const extentBytes = this.header.extentBytes;
    const extentIndex = Math.floor(offsetBytes / extentBytes);
    const inExtentBytes = offsetBytes % extentBytes;
    const toExtentEnd = extentBytes - inExtentBytes;
    const entry = this.catalog[extentIndex] ?? CATALOG_ABSENT;
    if (entry === CATALOG_ABSENT) return { kind: 'unallocated', lengthBytes: toExtentEnd };
    const bitmapOffsetBytes =
      this.dataOffsetBytes + SECTOR_BYTES * entry * (this.extentSectors + this.bitmapSectors);
    const sectorInExtent = Math.floor(inExtentBytes / SECTOR_BYTES);
    const toSectorEnd = SECTOR_BYTES - (inExtentBytes % SECTOR_BYTES);
    // One sector at a time: the bitmap byte says whether the sector is stored.
    const bitmapByte = new Uint8Array(1);
    await readHostZeroFilled(this.file, bitmapOffsetBytes + (sectorInExtent >> 3), bitmapByte);
    const lengthBytes = Math.min(toSectorEnd, maxLengthBytes);
    if (((bitmapByte[0]! >> (sectorInExtent & 7)) & 1) === 0) return { kind: 'unallocated', lengthBytes };
    const hostOffsetBytes =
      bitmapOffsetBytes +
      SECTOR_BYTES * (this.bitmapSectors + sectorInExtent) +
      (inExtentBytes % SECTOR_BYTES);
    return { kind: 'data', lengthBytes, hostOffsetBytes };
  }
}

async function openBochs(context: OpenContext): Promise<BlockDevice> {
  const head = await readExact(context.file, 0, BOCHS_HEADER_BYTES, 'Bochs header');
  const header = parseHeader(head, context.path);
  const catalogBytes = await readExact(
    context.file,
    header.headerBytes,
    header.catalogEntries * 4,
    'Bochs catalog',
  );
  const catalog = new Uint32Array(header.catalogEntries);
  const view = viewOf(catalogBytes);
  for (let i = 0; i < catalog.length; i++) catalog[i] = view.getUint32(i * 4, true);
  return new BochsDevice(context, header, catalog);
}

export const bochsDriver = {
  name: 'bochs',
  description: 'Bochs growing redolog image (read-only)',
  probe: (head: Uint8Array) => probeBochs(head),
  capabilities: {
    create: false,
    write: false,
    backing: false,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'none',
    concurrentWrites: false,
  },
  createOptions: [],
  open: openBochs,
} satisfies FormatDriver;
