// qcow version 1 header (48 bytes, big-endian): Buffer <-> typed record and qemu 7.2's validity rules.
// Layout: qemu block/qcow.c (QCowHeader) and the original QCOW format description (Gregory Fraser's
// "The QCOW Image Format", version 1).

import { ImageFormatError, UnsupportedError } from '../../errors.ts';
import { setU64be, u64be, viewOf } from '../common/binary.ts';

export const QCOW_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW_VERSION = 1;
export const QCOW_HEADER_BYTES = 48;
export const QCOW_CRYPT_NONE = 0;
export const QCOW_CRYPT_AES = 1;
/** Bit 63 of an L2 entry: the cluster is deflate-compressed. */
export const QCOW_OFLAG_COMPRESSED = 1n << 63n;

export interface QcowHeader {
  backingFileOffsetBytes: number;
  backingFileSizeBytes: number;
  mtimeSeconds: number;
  sizeBytes: number;
  clusterBits: number;
  l2Bits: number;
  cryptMethod: number;
  l1TableOffsetBytes: number;
}

export function isQcowHead(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  const view = viewOf(head);
  return view.getUint32(0, false) === QCOW_MAGIC && view.getUint32(4, false) === QCOW_VERSION;
}

/** L1 entries needed for `sizeBytes` (each maps 2^(clusterBits + l2Bits) bytes). */
export function qcowL1Entries(header: Pick<QcowHeader, 'sizeBytes' | 'clusterBits' | 'l2Bits'>): number {
  return Math.ceil(header.sizeBytes / 2 ** (header.clusterBits + header.l2Bits));
}

/** Parses and validates a header; throws ImageFormatError. AES (crypt_method 1) is the driver's to open. */
export function parseQcowHeader(bytes: Uint8Array, file: string): QcowHeader {
  if (bytes.length < QCOW_HEADER_BYTES || viewOf(bytes).getUint32(0, false) !== QCOW_MAGIC) {
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in qcow format' });
  }
  const view = viewOf(bytes);
  const version = view.getUint32(4, false);
  if (version !== QCOW_VERSION)
    throw new UnsupportedError({
      format: 'qcow',
      feature: `version ${version}`,
      message: `${file}: qcow (v1) version ${version} is not supported`,
    });
  const header: QcowHeader = {
    backingFileOffsetBytes: u64be(bytes, 8, file),
    backingFileSizeBytes: view.getUint32(16, false),
    mtimeSeconds: view.getUint32(20, false),
    sizeBytes: u64be(bytes, 24, file),
    clusterBits: view.getUint8(32),
    l2Bits: view.getUint8(33),
    cryptMethod: view.getUint32(36, false),
    l1TableOffsetBytes: u64be(bytes, 40, file),
  };
  if (header.sizeBytes <= 1)
    throw new ImageFormatError({
      file,
      offsetBytes: 24,
      message: 'Image size is too small (must be at least 2 bytes)',
    });
  if (header.clusterBits < 9 || header.clusterBits > 16)
    throw new ImageFormatError({
      file,
      offsetBytes: 32,
      message: 'Cluster size must be between 512 and 64k',
    });
  // qemu: L2 tables of 512 bytes .. 64 KiB.
  if (header.l2Bits < 6 || header.l2Bits > 13)
    throw new ImageFormatError({
      file,
      offsetBytes: 33,
      message: 'L2 table size must be between 512 and 64k',
    });
  if (header.cryptMethod > QCOW_CRYPT_AES)
    throw new ImageFormatError({
      file,
      offsetBytes: 36,
      message: 'invalid encryption method in qcow header',
    });
  if (qcowL1Entries(header) > 0x7fffffff / 8)
    throw new ImageFormatError({ file, offsetBytes: 24, message: 'Image is too big' });
  if (header.backingFileOffsetBytes !== 0 && header.backingFileSizeBytes > 1023) {
    throw new ImageFormatError({ file, offsetBytes: 16, message: 'Backing file name too long' });
  }
  return header;
}

/** Encodes the 48-byte header. */
export function encodeQcowHeader(header: QcowHeader): Uint8Array {
  const bytes = new Uint8Array(QCOW_HEADER_BYTES);
  const view = viewOf(bytes);
  view.setUint32(0, QCOW_MAGIC, false);
  view.setUint32(4, QCOW_VERSION, false);
  setU64be(view, 8, header.backingFileOffsetBytes);
  view.setUint32(16, header.backingFileSizeBytes, false);
  view.setUint32(20, header.mtimeSeconds, false);
  setU64be(view, 24, header.sizeBytes);
  view.setUint8(32, header.clusterBits);
  view.setUint8(33, header.l2Bits);
  view.setUint32(36, header.cryptMethod, false);
  setU64be(view, 40, header.l1TableOffsetBytes);
  return bytes;
}
