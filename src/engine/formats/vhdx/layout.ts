// VHDX on-disk structures, pure: GUIDs, the file identifier, the two headers, the region table and the
// metadata table with its known items, each parsed with checksum and bounds checks and encoded for create.
// Spec: MS-VHDX 2.1-2.6 (File Type Identifier, Headers, Region Table, Metadata Region).

import { randomBytes } from '../../lazy-crypto.ts';
import { ImageFormatError, UnsupportedError } from '../../errors.ts';
import { setU64le, u64le, viewOf } from '../common/binary.ts';
import { crc32c } from './crc32c.ts';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const VHDX_FILE_SIGNATURE = 'vhdxfile';
export const VHDX_HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
export const VHDX_REGION_TABLE_OFFSETS = [192 * KiB, 256 * KiB] as const;
export const VHDX_HEADER_BYTES = 4 * KiB;
export const VHDX_REGION_TABLE_BYTES = 64 * KiB;
export const VHDX_METADATA_TABLE_BYTES = 64 * KiB;
/** Metadata items, BAT and log live at 1 MiB multiples; the header section is the first MiB. */
export const VHDX_HEADER_SECTION_BYTES = MiB;
export const VHDX_MAX_BLOCK_BYTES = 256 * MiB;

/** Converts a canonical GUID string to its on-disk mixed-endian bytes (MS-VHDX 2.2.1 "GUID"). */
export function guidBytes(text: string): Uint8Array {
  const hex = text.replace(/-/g, '');
  const bytes = Buffer.from(hex, 'hex');
  const out = Buffer.from(bytes);
  out.writeUInt32LE(bytes.readUInt32BE(0), 0);
  out.writeUInt16LE(bytes.readUInt16BE(4), 4);
  out.writeUInt16LE(bytes.readUInt16BE(6), 6);
  return out;
}

export const GUID_BAT = guidBytes('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const GUID_METADATA = guidBytes('8B7CA206-4790-4B9A-B8FE-575F050F886E');
export const GUID_FILE_PARAMETERS = guidBytes('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const GUID_VIRTUAL_DISK_SIZE = guidBytes('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const GUID_PAGE83 = guidBytes('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const GUID_LOGICAL_SECTOR = guidBytes('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const GUID_PHYSICAL_SECTOR = guidBytes('CDA348C7-445D-4471-9CC9-E9885251C556');
export const GUID_PARENT_LOCATOR = guidBytes('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');

export function sameGuid(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

export function isZeroGuid(guid: Uint8Array): boolean {
  return guid.every((byte) => byte === 0);
}

export function newGuid(): Uint8Array {
  return randomBytes(16);
}

export interface VhdxHeader {
  /** Which copy (0 at 64 KiB, 1 at 128 KiB). */
  slot: number;
  sequenceNumber: bigint;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  logGuid: Uint8Array;
  logVersion: number;
  version: number;
  logLengthBytes: number;
  logOffsetBytes: number;
}

/** Parses one header copy; undefined when its signature or checksum is wrong (the other copy may do). */
export function parseVhdxHeader(bytes: Uint8Array, slot: number, file: string): VhdxHeader | undefined {
  const view = viewOf(bytes);
  if (Buffer.from(bytes.subarray(0, 4)).toString('latin1') !== 'head') return undefined;
  if (view.getUint32(4, true) !== crc32c(bytes.subarray(0, VHDX_HEADER_BYTES), 4)) return undefined;
  const at = VHDX_HEADER_OFFSETS[slot]!;
  return {
    slot,
    sequenceNumber: view.getBigUint64(8, true),
    fileWriteGuid: Uint8Array.from(bytes.subarray(16, 32)),
    dataWriteGuid: Uint8Array.from(bytes.subarray(32, 48)),
    logGuid: Uint8Array.from(bytes.subarray(48, 64)),
    logVersion: view.getUint16(64, true),
    version: view.getUint16(66, true),
    logLengthBytes: view.getUint32(68, true),
    logOffsetBytes: u64le(bytes, 72, file, at + 72),
  };
}

/** Encodes a header copy (4 KiB) with its checksum. */
export function encodeVhdxHeader(header: VhdxHeader): Uint8Array {
  const bytes = new Uint8Array(VHDX_HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.set(Buffer.from('head', 'latin1'), 0);
  view.setBigUint64(8, header.sequenceNumber, true);
  bytes.set(header.fileWriteGuid, 16);
  bytes.set(header.dataWriteGuid, 32);
  bytes.set(header.logGuid, 48);
  view.setUint16(64, header.logVersion, true);
  view.setUint16(66, header.version, true);
  view.setUint32(68, header.logLengthBytes, true);
  setU64le(view, 72, header.logOffsetBytes);
  view.setUint32(4, crc32c(bytes, 4), true);
  return bytes;
}

/** Picks the valid header with the higher sequence number (MS-VHDX 2.2.2.1); throws when neither is valid. */
export function currentHeader(copies: (VhdxHeader | undefined)[], file: string): VhdxHeader {
  const valid = copies.filter((copy): copy is VhdxHeader => copy !== undefined && copy.version === 1);
  if (valid.length === 0)
    throw new ImageFormatError({
      file,
      offsetBytes: VHDX_HEADER_OFFSETS[0],
      message: 'No valid VHDX header found (bad signature, checksum or version)',
    });
  const best = valid.reduce((a, b) => (b.sequenceNumber > a.sequenceNumber ? b : a));
  if (
    best.logOffsetBytes % MiB !== 0 ||
    best.logLengthBytes % MiB !== 0 ||
    best.logOffsetBytes < VHDX_HEADER_SECTION_BYTES
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: VHDX_HEADER_OFFSETS[best.slot]! + 68,
      message: 'VHDX log region is not 1 MiB aligned after the header section',
    });
  }
  return best;
}

export interface VhdxRegion {
  guid: Uint8Array;
  offsetBytes: number;
  lengthBytes: number;
  required: boolean;
}

/** Parses a region table copy; undefined when its signature or checksum is wrong. */
export function parseRegionTable(bytes: Uint8Array, at: number, file: string): VhdxRegion[] | undefined {
  const view = viewOf(bytes);
  if (Buffer.from(bytes.subarray(0, 4)).toString('latin1') !== 'regi') return undefined;
  if (view.getUint32(4, true) !== crc32c(bytes, 4)) return undefined;
  const entryCount = view.getUint32(8, true);
  if (entryCount > 2047)
    throw new ImageFormatError({
      file,
      offsetBytes: at + 8,
      message: `VHDX region table has ${entryCount} entries (at most 2047)`,
    });
  const regions: VhdxRegion[] = [];
  for (let i = 0; i < entryCount; i++) {
    const base = 16 + i * 32;
    regions.push({
      guid: Uint8Array.from(bytes.subarray(base, base + 16)),
      offsetBytes: u64le(bytes, base + 16, file, at + base + 16),
      lengthBytes: view.getUint32(base + 24, true),
      required: (view.getUint32(base + 28, true) & 1) === 1,
    });
  }
  return regions;
}

/** Encodes a region table (64 KiB) with its checksum. */
export function encodeRegionTable(regions: VhdxRegion[]): Uint8Array {
  const bytes = new Uint8Array(VHDX_REGION_TABLE_BYTES);
  const view = viewOf(bytes);
  bytes.set(Buffer.from('regi', 'latin1'), 0);
  view.setUint32(8, regions.length, true);
  regions.forEach((region, i) => {
    const base = 16 + i * 32;
    bytes.set(region.guid, base);
    setU64le(view, base + 16, region.offsetBytes);
    view.setUint32(base + 24, region.lengthBytes, true);
    view.setUint32(base + 28, region.required ? 1 : 0, true);
  });
  view.setUint32(4, crc32c(bytes, 4), true);
  return bytes;
}

export interface VhdxMetadata {
  blockSizeBytes: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSizeBytes: number;
  logicalSectorBytes: number;
  physicalSectorBytes: number;
  page83: Uint8Array;
  /** Where the Virtual Disk Size item sits, from the metadata region's start (set by parseMetadata). */
  virtualSizeItemOffsetBytes?: number;
}

export const META_FLAG_IS_VIRTUAL_DISK = 0x2;
export const META_FLAG_IS_REQUIRED = 0x4;

/** Parses the metadata table and its known items; unknown required items are refused (MS-VHDX 2.6.1.2). */
export function parseMetadata(region: Uint8Array, regionOffsetBytes: number, file: string): VhdxMetadata {
  const view = viewOf(region);
  if (Buffer.from(region.subarray(0, 8)).toString('latin1') !== 'metadata') {
    throw new ImageFormatError({
      file,
      offsetBytes: regionOffsetBytes,
      message: 'VHDX metadata table signature is wrong',
    });
  }
  const entryCount = view.getUint16(10, true);
  if (entryCount > 2047)
    throw new ImageFormatError({
      file,
      offsetBytes: regionOffsetBytes + 10,
      message: `VHDX metadata table has ${entryCount} entries (at most 2047)`,
    });
  const items = new Map<string, Uint8Array>();
  const itemOffsets = new Map<string, number>();
  const known = [
    GUID_FILE_PARAMETERS,
    GUID_VIRTUAL_DISK_SIZE,
    GUID_PAGE83,
    GUID_LOGICAL_SECTOR,
    GUID_PHYSICAL_SECTOR,
    GUID_PARENT_LOCATOR,
  ];
  for (let i = 0; i < entryCount; i++) {
    const base = 32 + i * 32;
    const guid = region.subarray(base, base + 16);
    const offset = view.getUint32(base + 16, true);
    const length = view.getUint32(base + 20, true);
    const flags = view.getUint32(base + 24, true);
    const isKnown = known.some((candidate) => sameGuid(candidate, guid));
    if (!isKnown) {
      if (flags & META_FLAG_IS_REQUIRED) {
        throw new UnsupportedError({
          format: 'vhdx',
          feature: 'unknown required metadata item',
          message: `${file}: VHDX metadata item ${Buffer.from(guid).toString('hex')} is required but unknown`,
        });
      }
      continue;
    }
    if (offset + length > region.length || (length > 0 && offset < 64 * KiB)) {
      throw new ImageFormatError({
        file,
        offsetBytes: regionOffsetBytes + base + 16,
        message: 'VHDX metadata item lies outside the metadata region',
      });
    }
    items.set(Buffer.from(guid).toString('hex'), region.subarray(offset, offset + length));
    itemOffsets.set(Buffer.from(guid).toString('hex'), offset);
  }
  const item = (guid: Uint8Array, minBytes: number, name: string): Uint8Array => {
    const value = items.get(Buffer.from(guid).toString('hex'));
    if (!value || value.length < minBytes)
      throw new ImageFormatError({
        file,
        offsetBytes: regionOffsetBytes,
        message: `VHDX metadata item ${name} is missing`,
      });
    return value;
  };
  const parameters = viewOf(item(GUID_FILE_PARAMETERS, 8, 'File Parameters'));
  const metadata: VhdxMetadata = {
    blockSizeBytes: parameters.getUint32(0, true),
    leaveBlocksAllocated: (parameters.getUint32(4, true) & 1) === 1,
    hasParent: (parameters.getUint32(4, true) & 2) === 2,
    virtualSizeBytes: u64le(item(GUID_VIRTUAL_DISK_SIZE, 8, 'Virtual Disk Size'), 0, file, regionOffsetBytes),
    logicalSectorBytes: viewOf(item(GUID_LOGICAL_SECTOR, 4, 'Logical Sector Size')).getUint32(0, true),
    physicalSectorBytes: viewOf(item(GUID_PHYSICAL_SECTOR, 4, 'Physical Sector Size')).getUint32(0, true),
    page83: Uint8Array.from(items.get(Buffer.from(GUID_PAGE83).toString('hex')) ?? new Uint8Array(16)),
  };
  const sizeItemOffset = itemOffsets.get(Buffer.from(GUID_VIRTUAL_DISK_SIZE).toString('hex'));
  if (sizeItemOffset !== undefined) metadata.virtualSizeItemOffsetBytes = sizeItemOffset;
  const { blockSizeBytes } = metadata;
  if (
    blockSizeBytes < MiB ||
    blockSizeBytes > VHDX_MAX_BLOCK_BYTES ||
    (blockSizeBytes & (blockSizeBytes - 1)) !== 0
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: regionOffsetBytes,
      message: `VHDX block size ${blockSizeBytes} must be a power of 2 between 1 MiB and 256 MiB`,
    });
  }
  if (metadata.logicalSectorBytes !== 512 && metadata.logicalSectorBytes !== 4096) {
    throw new ImageFormatError({
      file,
      offsetBytes: regionOffsetBytes,
      message: `VHDX logical sector size ${metadata.logicalSectorBytes} must be 512 or 4096`,
    });
  }
  if (
    metadata.virtualSizeBytes > 64 * 1024 * 1024 * MiB ||
    metadata.virtualSizeBytes % metadata.logicalSectorBytes !== 0
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: regionOffsetBytes,
      message: `VHDX virtual size ${metadata.virtualSizeBytes} is not a sector multiple up to 64 TiB`,
    });
  }
  return metadata;
}

/** Encodes a metadata region: table at 0, the five items from 64 KiB on. */
export function encodeMetadata(metadata: VhdxMetadata, regionBytes: number): Uint8Array {
  const region = new Uint8Array(regionBytes);
  const view = viewOf(region);
  region.set(Buffer.from('metadata', 'latin1'), 0);
  const virtualFlags = META_FLAG_IS_VIRTUAL_DISK | META_FLAG_IS_REQUIRED;
  const items: [Uint8Array, number, number][] = [
    [GUID_FILE_PARAMETERS, 8, META_FLAG_IS_REQUIRED],
    [GUID_VIRTUAL_DISK_SIZE, 8, virtualFlags],
    [GUID_PAGE83, 16, virtualFlags],
    [GUID_LOGICAL_SECTOR, 4, virtualFlags],
    [GUID_PHYSICAL_SECTOR, 4, virtualFlags],
  ];
  view.setUint16(10, items.length, true);
  let dataAt = 64 * KiB;
  const offsets: number[] = [];
  items.forEach(([guid, length, flags], i) => {
    const base = 32 + i * 32;
    region.set(guid, base);
    view.setUint32(base + 16, dataAt, true);
    view.setUint32(base + 20, length, true);
    view.setUint32(base + 24, flags, true);
    offsets.push(dataAt);
    dataAt += length;
  });
  view.setUint32(offsets[0]!, metadata.blockSizeBytes, true);
  view.setUint32(
    offsets[0]! + 4,
    (metadata.leaveBlocksAllocated ? 1 : 0) | (metadata.hasParent ? 2 : 0),
    true,
  );
  setU64le(view, offsets[1]!, metadata.virtualSizeBytes);
  region.set(metadata.page83, offsets[2]!);
  view.setUint32(offsets[3]!, metadata.logicalSectorBytes, true);
  view.setUint32(offsets[4]!, metadata.physicalSectorBytes, true);
  return region;
}

/** Payload block states in BAT entries (MS-VHDX 2.5.1.1); 5 is the v0.95 spelling of UNMAPPED. */
export const PAYLOAD_NOT_PRESENT = 0;
export const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
export const PAYLOAD_UNMAPPED_V095 = 5;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;

/** Sector-bitmap chunk ratio: payload blocks per BAT chunk (MS-VHDX 2.5.1). */
export function chunkRatio(metadata: Pick<VhdxMetadata, 'blockSizeBytes' | 'logicalSectorBytes'>): number {
  return (2 ** 23 * metadata.logicalSectorBytes) / metadata.blockSizeBytes;
}

/** BAT entries of an image without a parent: payload entries plus interleaved sector-bitmap entries. */
export function batEntryCount(
  metadata: Pick<VhdxMetadata, 'blockSizeBytes' | 'logicalSectorBytes' | 'virtualSizeBytes'>,
): number {
  const payloadBlocks = Math.ceil(metadata.virtualSizeBytes / metadata.blockSizeBytes);
  return payloadBlocks === 0 ? 0 : payloadBlocks + Math.floor((payloadBlocks - 1) / chunkRatio(metadata));
}
