// VHD (qemu's "vpc") on-disk structures: the 512-byte hard disk footer, the 1024-byte dynamic disk
// header, their ones'-complement checksum and the CHS geometry rules. Pure Buffer <-> record code.
// Spec: Microsoft "Virtual Hard Disk Image Format Specification" v1.0, "Hard Disk Footer Format",
// "Dynamic Disk Header Format", Appendix "CHS Calculation"; sizing rules as qemu 7.2's block/vpc.c.

import { ImageFormatError } from '../../errors.ts';
import { setU64be, u64be, viewOf } from '../common/binary.ts';

export const VPC_FOOTER_BYTES = 512;
export const VPC_DYNAMIC_HEADER_BYTES = 1024;
export const VPC_FOOTER_COOKIE = 'conectix';
export const VPC_DYNAMIC_COOKIE = 'cxsparse';
export const VPC_TYPE_FIXED = 2;
export const VPC_TYPE_DYNAMIC = 3;
export const VPC_TYPE_DIFFERENCING = 4;
/** Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z). */
export const VPC_EPOCH_SECONDS = 946684800;
/** CHS maxima of the spec: 65535 cylinders, 16 heads, 255 sectors per track. */
export const VPC_MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;
/** qemu's size limit: 2040 GiB (0xff000000 sectors). */
export const VPC_MAX_SECTORS = 0xff000000;
export const VPC_UNALLOCATED = 0xffffffff;
const SECTOR_BYTES = 512;

export interface VpcFooter {
  features: number;
  version: number;
  /** Offset of the dynamic header; 2^64-1 (kept as -1) for fixed disks. */
  dataOffsetBytes: number;
  timestampSeconds: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: string;
  originalSizeBytes: number;
  currentSizeBytes: number;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: number;
  checksum: number;
  uuid: Uint8Array;
  savedState: number;
}

export interface VpcParentLocator {
  platformCode: string;
  dataSpace: number;
  dataLengthBytes: number;
  dataOffsetBytes: number;
}

export interface VpcDynamicHeader {
  tableOffsetBytes: number;
  headerVersion: number;
  maxTableEntries: number;
  blockSizeBytes: number;
  checksum: number;
  parentUuid: Uint8Array;
  parentTimestampSeconds: number;
  /** parent_name: UTF-16BE, NUL-terminated. */
  parentName: string;
  parentLocators: VpcParentLocator[];
}

/** Ones' complement of the byte sum, with the 4 checksum bytes at `checksumAt` counted as zero. */
export function vpcChecksum(bytes: Uint8Array, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= checksumAt && i < checksumAt + 4) continue;
    sum = (sum + (bytes[i] ?? 0)) >>> 0;
  }
  return ~sum >>> 0;
}

function ascii(bytes: Uint8Array, at: number, lengthBytes: number): string {
  return Buffer.from(bytes.subarray(at, at + lengthBytes)).toString('latin1');
}

/** True when `bytes` starts with the footer cookie `conectix`. */
export function hasFooterCookie(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && ascii(bytes, 0, 8) === VPC_FOOTER_COOKIE;
}

/** Parses a footer (cookie and checksum verified, as qemu does); throws ImageFormatError. */
export function parseFooter(bytes: Uint8Array, file: string, fileOffsetBytes: number): VpcFooter {
  if (!hasFooterCookie(bytes) || bytes.length < VPC_FOOTER_BYTES) {
    throw new ImageFormatError({
      file,
      offsetBytes: fileOffsetBytes,
      message: 'invalid VPC image (no conectix footer)',
    });
  }
  const view = viewOf(bytes);
  const dataOffsetRaw = view.getBigUint64(16, false);
  const footer: VpcFooter = {
    features: view.getUint32(8, false),
    version: view.getUint32(12, false),
    dataOffsetBytes:
      dataOffsetRaw === 0xffffffffffffffffn ? -1 : u64be(bytes, 16, file, fileOffsetBytes + 16),
    timestampSeconds: view.getUint32(24, false),
    creatorApp: ascii(bytes, 28, 4),
    creatorVersion: view.getUint32(32, false),
    creatorOs: ascii(bytes, 36, 4),
    originalSizeBytes: u64be(bytes, 40, file, fileOffsetBytes + 40),
    currentSizeBytes: u64be(bytes, 48, file, fileOffsetBytes + 48),
    cylinders: view.getUint16(56, false),
    heads: view.getUint8(58),
    sectorsPerTrack: view.getUint8(59),
    diskType: view.getUint32(60, false),
    checksum: view.getUint32(64, false),
    uuid: Uint8Array.from(bytes.subarray(68, 84)),
    savedState: view.getUint8(84),
  };
  if (vpcChecksum(bytes.subarray(0, VPC_FOOTER_BYTES), 64) !== footer.checksum) {
    throw new ImageFormatError({
      file,
      offsetBytes: fileOffsetBytes + 64,
      message: 'Incorrect header checksum',
    });
  }
  return footer;
}

/** Serializes a footer, computing its checksum. */
export function buildFooter(footer: VpcFooter): Buffer {
  const bytes = Buffer.alloc(VPC_FOOTER_BYTES);
  const view = viewOf(bytes);
  bytes.write(VPC_FOOTER_COOKIE, 0, 'latin1');
  view.setUint32(8, footer.features, false);
  view.setUint32(12, footer.version, false);
  if (footer.dataOffsetBytes < 0) view.setBigUint64(16, 0xffffffffffffffffn, false);
  else setU64be(view, 16, footer.dataOffsetBytes);
  view.setUint32(24, footer.timestampSeconds >>> 0, false);
  bytes.write(footer.creatorApp.padEnd(4, '\0').slice(0, 4), 28, 'latin1');
  view.setUint32(32, footer.creatorVersion, false);
  bytes.write(footer.creatorOs.padEnd(4, '\0').slice(0, 4), 36, 'latin1');
  setU64be(view, 40, footer.originalSizeBytes);
  setU64be(view, 48, footer.currentSizeBytes);
  view.setUint16(56, footer.cylinders, false);
  view.setUint8(58, footer.heads);
  view.setUint8(59, footer.sectorsPerTrack);
  view.setUint32(60, footer.diskType, false);
  bytes.set(footer.uuid.subarray(0, 16), 68);
  view.setUint8(84, footer.savedState);
  view.setUint32(64, vpcChecksum(bytes, 64), false);
  return bytes;
}

/** Parses the dynamic disk header (cookie checked; its checksum is not, as qemu ignores it). */
export function parseDynamicHeader(
  bytes: Uint8Array,
  file: string,
  fileOffsetBytes: number,
): VpcDynamicHeader {
  if (bytes.length < VPC_DYNAMIC_HEADER_BYTES || ascii(bytes, 0, 8) !== VPC_DYNAMIC_COOKIE) {
    throw new ImageFormatError({
      file,
      offsetBytes: fileOffsetBytes,
      message: 'invalid VPC image (no cxsparse dynamic header)',
    });
  }
  const view = viewOf(bytes);
  const nameBytes = Buffer.from(bytes.subarray(64, 576));
  let parentName = '';
  for (let i = 0; i + 1 < nameBytes.length; i += 2) {
    const unit = nameBytes.readUInt16BE(i);
    if (unit === 0) break;
    parentName += String.fromCharCode(unit);
  }
  const parentLocators: VpcParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    const platformCode = ascii(bytes, at, 4);
    if (view.getUint32(at, false) === 0) continue;
    parentLocators.push({
      platformCode,
      dataSpace: view.getUint32(at + 4, false),
      dataLengthBytes: view.getUint32(at + 8, false),
      dataOffsetBytes: u64be(bytes, at + 16, file, fileOffsetBytes + at + 16),
    });
  }
  return {
    tableOffsetBytes: u64be(bytes, 16, file, fileOffsetBytes + 16),
    headerVersion: view.getUint32(24, false),
    maxTableEntries: view.getUint32(28, false),
    blockSizeBytes: view.getUint32(32, false),
    checksum: view.getUint32(36, false),
    parentUuid: Uint8Array.from(bytes.subarray(40, 56)),
    parentTimestampSeconds: view.getUint32(56, false),
    parentName,
    parentLocators,
  };
}

/** Serializes a dynamic header without parent fields (qemu's create), computing its checksum. */
export function buildDynamicHeader(
  tableOffsetBytes: number,
  maxTableEntries: number,
  blockSizeBytes: number,
): Buffer {
  const bytes = Buffer.alloc(VPC_DYNAMIC_HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.write(VPC_DYNAMIC_COOKIE, 0, 'latin1');
  // The spec says 0xFFFFFFFF, but Microsoft's tools expect all 64 bits set (as qemu writes it).
  view.setBigUint64(8, 0xffffffffffffffffn, false);
  setU64be(view, 16, tableOffsetBytes);
  view.setUint32(24, 0x00010000, false);
  view.setUint32(28, maxTableEntries, false);
  view.setUint32(32, blockSizeBytes, false);
  view.setUint32(36, vpcChecksum(bytes, 36), false);
  return bytes;
}

export interface ChsGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** The spec's CHS calculation (Appendix), capped at the maximum geometry. */
export function calculateGeometry(totalSectors: number): ChsGeometry {
  const sectors = Math.min(totalSectors, VPC_MAX_GEOMETRY_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylindersTimesHeads: number;
  if (sectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    heads = Math.max(4, Math.ceil(cylindersTimesHeads / 1024));
    if (cylindersTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
    if (cylindersTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylindersTimesHeads / heads), heads, sectorsPerTrack };
}

/**
 * The geometry and guest size qemu 7.2 gives a new image of `requestedBytes`: the smallest CHS geometry
 * covering the request (rounding up), or with `forceSize` the exact size under the maximum geometry.
 * Throws ImageFormatError past 2040 GiB.
 */
export function roundedCreateSize(
  requestedBytes: number,
  forceSize: boolean,
  file: string,
): ChsGeometry & { totalSectors: number } {
  let geometry: ChsGeometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
  if (forceSize) {
    geometry = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
  } else {
    const wanted = Math.min(VPC_MAX_GEOMETRY_SECTORS, Math.floor(requestedBytes / SECTOR_BYTES));
    // Increase the sector count until the geometry covers the request (bounded: the rule's slack is small).
    for (
      let i = 0;
      wanted > geometry.cylinders * geometry.heads * geometry.sectorsPerTrack && i < 1_000_000;
      i++
    ) {
      geometry = calculateGeometry(wanted + i);
    }
  }
  let totalSectors = geometry.cylinders * geometry.heads * geometry.sectorsPerTrack;
  if (totalSectors === VPC_MAX_GEOMETRY_SECTORS) {
    totalSectors = Math.floor(requestedBytes / SECTOR_BYTES);
    if (totalSectors > VPC_MAX_SECTORS) {
      throw new ImageFormatError({ file, message: 'Disk size is too large, max size is 2040 GiB' });
    }
  }
  return { ...geometry, totalSectors };
}

/** Creator apps whose images qemu sizes from current_size instead of the CHS product. */
const CURRENT_SIZE_CREATORS = new Set(['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0']);

/**
 * Guest size in bytes as qemu 7.2 computes it: CHS product, except current_size for Hyper-V and
 * friends (by creator app), for maximum-geometry images, or when `forceSizeCalc` says so.
 */
export function guestSizeBytes(footer: VpcFooter, forceSizeCalc?: 'chs' | 'current_size'): number {
  if (usesCurrentSize(footer, forceSizeCalc))
    return Math.floor(footer.currentSizeBytes / SECTOR_BYTES) * SECTOR_BYTES;
  return footer.cylinders * footer.heads * footer.sectorsPerTrack * SECTOR_BYTES;
}

/** True when qemu 7.2 sizes this image from current_size rather than from its CHS geometry. */
export function usesCurrentSize(footer: VpcFooter, forceSizeCalc?: 'chs' | 'current_size'): boolean {
  const chsSectors = footer.cylinders * footer.heads * footer.sectorsPerTrack;
  const useChs = forceSizeCalc === 'chs' || !CURRENT_SIZE_CREATORS.has(footer.creatorApp);
  return !useChs || chsSectors === VPC_MAX_GEOMETRY_SECTORS || forceSizeCalc === 'current_size';
}
