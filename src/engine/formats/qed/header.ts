// QED header: Buffer <-> typed record and its validity rules, pure, no I/O.
// Spec: qemu docs/interop/qed_spec.txt ("Header"); limits as qemu's block/qed.c enforces them.

import { ImageFormatError, UnsupportedError } from '../../errors.ts';
import { setU64le, u64le, viewOf } from '../common/binary.ts';

export const QED_MAGIC = 0x00444551; // "QED\0" read as a little-endian u32
export const QED_HEADER_BYTES = 64;
export const QED_F_BACKING_FILE = 0x1;
export const QED_F_NEED_CHECK = 0x2;
export const QED_F_BACKING_FORMAT_NO_PROBE = 0x4;
export const QED_KNOWN_FEATURES = QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE;
export const QED_MIN_CLUSTER_BYTES = 4 * 1024;
export const QED_MAX_CLUSTER_BYTES = 64 * 1024 * 1024;
export const QED_MIN_TABLE_CLUSTERS = 1;
export const QED_MAX_TABLE_CLUSTERS = 16;
/** A table entry of 1 means "reads as zeros" (spec: "Zero clusters"). */
export const QED_CLUSTER_ZERO = 1;

export interface QedHeader {
  clusterSizeBytes: number;
  /** L1 and L2 table size, in clusters. */
  tableClusters: number;
  headerClusters: number;
  features: number;
  compatFeatures: number;
  autoclearFeatures: number;
  l1TableOffsetBytes: number;
  imageSizeBytes: number;
  backingFilenameOffsetBytes: number;
  backingFilenameSizeBytes: number;
}

function isPowerOfTwo(value: number): boolean {
  return value > 0 && (value & (value - 1)) === 0;
}

/** Entries per L1 or L2 table. */
export function qedTableEntries(header: Pick<QedHeader, 'clusterSizeBytes' | 'tableClusters'>): number {
  return (header.tableClusters * header.clusterSizeBytes) / 8;
}

/** Largest image the two-level table can map (spec: "Table size"). */
export function qedMaxImageBytes(clusterSizeBytes: number, tableClusters: number): number {
  const entries = qedTableEntries({ clusterSizeBytes, tableClusters });
  return Math.min(entries * entries * clusterSizeBytes, Number.MAX_SAFE_INTEGER);
}

/** Throws unless cluster and table sizes are powers of two in qemu's ranges. */
export function checkQedGeometry(clusterSizeBytes: number, tableClusters: number, file: string): void {
  if (
    !isPowerOfTwo(clusterSizeBytes) ||
    clusterSizeBytes < QED_MIN_CLUSTER_BYTES ||
    clusterSizeBytes > QED_MAX_CLUSTER_BYTES
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: 4,
      message: `QED cluster size ${clusterSizeBytes} must be a power of 2 within [4096, 67108864]`,
    });
  }
  if (
    !isPowerOfTwo(tableClusters) ||
    tableClusters < QED_MIN_TABLE_CLUSTERS ||
    tableClusters > QED_MAX_TABLE_CLUSTERS
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: 8,
      message: `QED table size ${tableClusters} must be a power of 2 within [1, 16]`,
    });
  }
}

/** True when the 64-byte head starts with the QED magic. */
export function isQedHead(head: Uint8Array): boolean {
  return head.length >= 4 && viewOf(head).getUint32(0, true) === QED_MAGIC;
}

/** Parses and validates a header; throws ImageFormatError or UnsupportedError (unknown feature bits). */
export function parseQedHeader(bytes: Uint8Array, file: string): QedHeader {
  if (bytes.length < QED_HEADER_BYTES || !isQedHead(bytes)) {
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in QED format' });
  }
  const view = viewOf(bytes);
  const header: QedHeader = {
    clusterSizeBytes: view.getUint32(4, true),
    tableClusters: view.getUint32(8, true),
    headerClusters: view.getUint32(12, true),
    features: u64le(bytes, 16, file),
    compatFeatures: u64le(bytes, 24, file),
    autoclearFeatures: u64le(bytes, 32, file),
    l1TableOffsetBytes: u64le(bytes, 40, file),
    imageSizeBytes: u64le(bytes, 48, file),
    backingFilenameOffsetBytes: view.getUint32(56, true),
    backingFilenameSizeBytes: view.getUint32(60, true),
  };
  checkQedGeometry(header.clusterSizeBytes, header.tableClusters, file);
  if (header.features > 0xffffffff || (header.features & ~QED_KNOWN_FEATURES) !== 0) {
    throw new UnsupportedError({
      format: 'qed',
      feature: `feature bits 0x${header.features.toString(16)}`,
      message: `${file}: QED image uses unsupported feature bits 0x${header.features.toString(16)}`,
    });
  }
  if (header.headerClusters === 0 || header.headerClusters * header.clusterSizeBytes > 1 << 30) {
    throw new ImageFormatError({
      file,
      offsetBytes: 12,
      message: `QED header size of ${header.headerClusters} clusters is invalid`,
    });
  }
  if (
    header.imageSizeBytes % 512 !== 0 ||
    header.imageSizeBytes > qedMaxImageBytes(header.clusterSizeBytes, header.tableClusters)
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: 48,
      message: `QED image size ${header.imageSizeBytes} must be a multiple of 512 within the table's reach`,
    });
  }
  if (
    header.l1TableOffsetBytes % header.clusterSizeBytes !== 0 ||
    header.l1TableOffsetBytes < header.headerClusters * header.clusterSizeBytes
  ) {
    throw new ImageFormatError({
      file,
      offsetBytes: 40,
      message: `QED L1 table offset ${header.l1TableOffsetBytes} is not a cluster after the header`,
    });
  }
  if (header.features & QED_F_BACKING_FILE) {
    const end = header.backingFilenameOffsetBytes + header.backingFilenameSizeBytes;
    if (header.backingFilenameSizeBytes > 1023 || end > header.headerClusters * header.clusterSizeBytes) {
      throw new ImageFormatError({
        file,
        offsetBytes: 56,
        message: 'QED backing file name lies outside the header',
      });
    }
  }
  return header;
}

/** Encodes the 64-byte header. */
export function encodeQedHeader(header: QedHeader): Uint8Array {
  const bytes = new Uint8Array(QED_HEADER_BYTES);
  const view = viewOf(bytes);
  view.setUint32(0, QED_MAGIC, true);
  view.setUint32(4, header.clusterSizeBytes, true);
  view.setUint32(8, header.tableClusters, true);
  view.setUint32(12, header.headerClusters, true);
  setU64le(view, 16, header.features);
  setU64le(view, 24, header.compatFeatures);
  setU64le(view, 32, header.autoclearFeatures);
  setU64le(view, 40, header.l1TableOffsetBytes);
  setU64le(view, 48, header.imageSizeBytes);
  view.setUint32(56, header.backingFilenameOffsetBytes, true);
  view.setUint32(60, header.backingFilenameSizeBytes, true);
  return bytes;
}
