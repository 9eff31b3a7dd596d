// VMDK hosted sparse extent header ("KDMV", version 1-3): the 512-byte SparseExtentHeader at sector 0
// and, for stream-optimized files whose grain directory sits at the end, the footer copy of it.
// Spec: VMware "Virtual Disk Format 1.1", "Hosted Sparse Extent Header" and "Stream-Optimized
// Compressed Sparse Extents"; the limits are qemu 7.2's block/vmdk.c (vmdk_open_vmdk4, vmdk_add_extent).

import { ImageFormatError, UnsupportedError } from '../../errors.ts';
import { setU64le, viewOf } from '../common/binary.ts';

export const VMDK4_MAGIC = 0x564d444b; // 'KDMV' read little-endian
export const VMDK3_MAGIC = 0x44574f43; // 'COWD'
export const SPARSE_HEADER_BYTES = 512;
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESS = 1 << 16;
export const FLAG_MARKER = 1 << 17;
export const COMPRESSION_DEFLATE = 1;
/** gd_offset value meaning "the grain directory is at the end; read the footer" (stream-optimized). */
export const GD_AT_END = -1;
/** qemu's limits: at most 512 entries per grain table, grains of at most 2 Mi sectors, 32 Mi GD entries. */
export const MAX_GTES_PER_GT = 512;
export const MAX_GRAIN_SECTORS = 0x200000;
export const MAX_L1_ENTRIES = 32 * 1024 * 1024;
export const SECTOR_BYTES = 512;

export interface SparseHeader {
  version: number;
  flags: number;
  capacitySectors: number;
  grainSectors: number;
  descriptorOffsetSectors: number;
  descriptorSectors: number;
  gtesPerGt: number;
  redundantGdOffsetSectors: number;
  /** GD_AT_END (-1) for stream-optimized files that keep it in the footer. */
  gdOffsetSectors: number;
  overheadSectors: number;
  compressAlgorithm: number;
}

/** True when the head starts with the KDMV magic. */
export function hasSparseMagic(head: Uint8Array): boolean {
  return head.length >= 4 && viewOf(head).getUint32(0, true) === VMDK4_MAGIC;
}

/** Parses a KDMV header (magic and version checked; table limits are checked by `validateSparseHeader`). */
export function parseSparseHeader(bytes: Uint8Array, file: string, fileOffsetBytes = 0): SparseHeader {
  if (bytes.length < SPARSE_HEADER_BYTES || !hasSparseMagic(bytes)) {
    throw new ImageFormatError({
      file,
      offsetBytes: fileOffsetBytes,
      message: 'not a VMDK sparse extent (no KDMV magic)',
    });
  }
  const view = viewOf(bytes);
  const gdRaw = view.getBigUint64(56, true);
  // Fields are read approximately past 2^53 on purpose: validateSparseHeader and the table bounds
  // reject such values with qemu's messages ("L1 size too big", ...) instead of a generic overflow.
  const field = (at: number) => Number(view.getBigUint64(at, true));
  return {
    version: view.getUint32(4, true),
    flags: view.getUint32(8, true),
    capacitySectors: field(12),
    grainSectors: field(20),
    descriptorOffsetSectors: field(28),
    descriptorSectors: field(36),
    gtesPerGt: view.getUint32(44, true),
    redundantGdOffsetSectors: field(48),
    gdOffsetSectors: gdRaw === 0xffffffffffffffffn ? GD_AT_END : field(56),
    overheadSectors: field(64),
    compressAlgorithm: view.getUint16(77, true),
  };
}

/** Checks a header against qemu's limits before any table is allocated; throws ImageFormatError. */
export function validateSparseHeader(header: SparseHeader, file: string, readOnly: boolean): void {
  if (header.version > 3) {
    throw new UnsupportedError({
      format: 'vmdk',
      feature: `version ${header.version}`,
      message: `${file}: Unsupported VMDK version ${header.version}`,
    });
  }
  // Version 3 only adds change tracking: readable as version 1, writable only when compressed (qemu).
  if (header.version === 3 && !readOnly && (header.flags & FLAG_COMPRESS) === 0) {
    throw new UnsupportedError({
      format: 'vmdk',
      feature: 'writing version 3',
      message: `${file}: VMDK version 3 must be read only`,
    });
  }
  if (header.gtesPerGt > MAX_GTES_PER_GT) {
    throw new ImageFormatError({ file, offsetBytes: 44, message: 'L2 table size too big' });
  }
  if (header.gtesPerGt === 0 || header.grainSectors === 0) {
    throw new ImageFormatError({ file, offsetBytes: 20, message: 'L1 entry size is invalid' });
  }
  if (header.grainSectors > MAX_GRAIN_SECTORS) {
    throw new ImageFormatError({
      file,
      offsetBytes: 20,
      message: 'Invalid granularity, image may be corrupt',
    });
  }
  if (l1EntryCount(header) > MAX_L1_ENTRIES) {
    throw new ImageFormatError({ file, offsetBytes: 12, message: 'L1 size too big' });
  }
  if (header.capacitySectors * SECTOR_BYTES > Number.MAX_SAFE_INTEGER) {
    throw new ImageFormatError({
      file,
      offsetBytes: 12,
      message: `capacity of ${header.capacitySectors} sectors is too large`,
    });
  }
}

/** Grain directory entries the capacity needs. */
export function l1EntryCount(header: SparseHeader): number {
  const sectorsPerGt = header.gtesPerGt * header.grainSectors;
  return Math.ceil(header.capacitySectors / sectorsPerGt);
}

/** Serializes a header as qemu's create writes it (check bytes "\n \r\n"). */
export function buildSparseHeader(header: SparseHeader): Buffer {
  const bytes = Buffer.alloc(SPARSE_HEADER_BYTES);
  const view = viewOf(bytes);
  view.setUint32(0, VMDK4_MAGIC, true);
  view.setUint32(4, header.version, true);
  view.setUint32(8, header.flags, true);
  setU64le(view, 12, header.capacitySectors);
  setU64le(view, 20, header.grainSectors);
  setU64le(view, 28, header.descriptorOffsetSectors);
  setU64le(view, 36, header.descriptorSectors);
  view.setUint32(44, header.gtesPerGt, true);
  setU64le(view, 48, header.redundantGdOffsetSectors);
  if (header.gdOffsetSectors === GD_AT_END) view.setBigUint64(56, 0xffffffffffffffffn, true);
  else setU64le(view, 56, header.gdOffsetSectors);
  setU64le(view, 64, header.overheadSectors);
  bytes.set([0x0a, 0x20, 0x0d, 0x0a], 73);
  view.setUint16(77, header.compressAlgorithm, true);
  return bytes;
}
