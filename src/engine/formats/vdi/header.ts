// VDI (VirtualBox) header: the 512-byte pre-header + header v1.1 record at offset 0, little-endian.
// Layout as VirtualBox's VDICore.h (VDIPREHEADER, VDIHEADER1PLUS) and qemu 7.2's block/vdi.c, whose
// open-time checks (version 1.1, 1 MiB blocks, 512-byte sectors, no parent/link UUIDs) are kept here.

import { ImageFormatError, UnsupportedError } from '../../errors.ts';
import { setU64le, u64le, viewOf } from '../common/binary.ts';

export const VDI_HEADER_BYTES = 512;
export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_VERSION_1_1 = 0x00010001;
export const VDI_TYPE_DYNAMIC = 1;
export const VDI_TYPE_STATIC = 2;
export const VDI_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';
export const VDI_UNALLOCATED = 0xffffffff;
export const VDI_DISCARDED = 0xfffffffe;
/** qemu accepts only 1 MiB blocks. */
export const VDI_BLOCK_BYTES = 1024 * 1024;
/** qemu's VDI_BLOCKS_IN_IMAGE_MAX: the block map must fit 32-bit indexes. */
export const VDI_MAX_BLOCKS = 0x3fffffff;
export const VDI_SECTOR_BYTES = 512;
/** Field offsets used by writers that patch the header in place. */
export const VDI_BLOCKS_ALLOCATED_AT = 0x184;
export const VDI_DISK_SIZE_AT = 0x170;
export const VDI_BLOCKS_IN_IMAGE_AT = 0x180;

export interface VdiHeader {
  text: string;
  version: number;
  headerSizeBytes: number;
  imageType: number;
  imageFlags: number;
  offsetBmapBytes: number;
  offsetDataBytes: number;
  sectorSizeBytes: number;
  /** Rounded up to a sector, as qemu does for VBoxManage's odd sizes. */
  diskSizeBytes: number;
  blockSizeBytes: number;
  blockExtraBytes: number;
  blocksInImage: number;
  blocksAllocated: number;
  uuidImage: Uint8Array;
  uuidLastSnap: Uint8Array;
  uuidLink: Uint8Array;
  uuidParent: Uint8Array;
}

/** True when the head carries the VDI signature at 0x40 (qemu's vdi_probe). */
export function hasVdiSignature(head: Uint8Array): boolean {
  return head.length >= VDI_HEADER_BYTES && viewOf(head).getUint32(0x40, true) === VDI_SIGNATURE;
}

const isNullUuid = (uuid: Uint8Array): boolean => uuid.every((byte) => byte === 0);

/** Parses and validates the header as qemu's vdi_open does; throws ImageFormatError / UnsupportedError. */
export function parseVdiHeader(bytes: Uint8Array, file: string): VdiHeader {
  if (bytes.length < VDI_HEADER_BYTES) {
    throw new ImageFormatError({
      file,
      offsetBytes: 0,
      message: `Image not in VDI format (${bytes.length} bytes, shorter than a header)`,
    });
  }
  const view = viewOf(bytes);
  const signature = view.getUint32(0x40, true);
  if (signature !== VDI_SIGNATURE) {
    throw new ImageFormatError({
      file,
      offsetBytes: 0x40,
      message: `Image not in VDI format (bad signature ${signature.toString(16).padStart(8, '0')})`,
    });
  }
  const textEnd = bytes.subarray(0, 0x40).indexOf(0);
  const header: VdiHeader = {
    text: Buffer.from(bytes.subarray(0, textEnd < 0 ? 0x40 : textEnd)).toString('latin1'),
    version: view.getUint32(0x44, true),
    headerSizeBytes: view.getUint32(0x48, true),
    imageType: view.getUint32(0x4c, true),
    imageFlags: view.getUint32(0x50, true),
    offsetBmapBytes: view.getUint32(0x154, true),
    offsetDataBytes: view.getUint32(0x158, true),
    sectorSizeBytes: view.getUint32(0x168, true),
    diskSizeBytes: u64le(bytes, 0x170, file),
    blockSizeBytes: view.getUint32(0x178, true),
    blockExtraBytes: view.getUint32(0x17c, true),
    blocksInImage: view.getUint32(0x180, true),
    blocksAllocated: view.getUint32(0x184, true),
    uuidImage: Uint8Array.from(bytes.subarray(0x188, 0x198)),
    uuidLastSnap: Uint8Array.from(bytes.subarray(0x198, 0x1a8)),
    uuidLink: Uint8Array.from(bytes.subarray(0x1a8, 0x1b8)),
    uuidParent: Uint8Array.from(bytes.subarray(0x1b8, 0x1c8)),
  };
  header.diskSizeBytes = Math.ceil(header.diskSizeBytes / VDI_SECTOR_BYTES) * VDI_SECTOR_BYTES;
  const fail = (offsetBytes: number, message: string): never => {
    throw new ImageFormatError({ file, offsetBytes, message: `unsupported VDI image (${message})` });
  };
  if (header.version !== VDI_VERSION_1_1)
    fail(0x44, `version ${header.version >>> 16}.${header.version & 0xffff}`);
  if (header.offsetBmapBytes % VDI_SECTOR_BYTES !== 0)
    fail(0x154, `unaligned block map offset 0x${header.offsetBmapBytes.toString(16)}`);
  if (header.offsetDataBytes % VDI_SECTOR_BYTES !== 0)
    fail(0x158, `unaligned data offset 0x${header.offsetDataBytes.toString(16)}`);
  if (header.sectorSizeBytes !== VDI_SECTOR_BYTES)
    fail(0x168, `sector size ${header.sectorSizeBytes} is not ${VDI_SECTOR_BYTES}`);
  if (header.blockSizeBytes !== VDI_BLOCK_BYTES)
    fail(0x178, `block size ${header.blockSizeBytes} is not ${VDI_BLOCK_BYTES}`);
  if (header.blockExtraBytes !== 0) fail(0x17c, `block extra ${header.blockExtraBytes} is not 0`);
  if (header.diskSizeBytes > header.blocksInImage * header.blockSizeBytes) {
    fail(
      0x170,
      `disk size ${header.diskSizeBytes}, image bitmap has room for ${header.blocksInImage * header.blockSizeBytes}`,
    );
  }
  if (!isNullUuid(header.uuidLink)) fail(0x1a8, 'non-NULL link UUID');
  if (!isNullUuid(header.uuidParent)) fail(0x1b8, 'non-NULL parent UUID');
  if (header.blocksInImage > VDI_MAX_BLOCKS)
    fail(0x180, `too many blocks ${header.blocksInImage}, max is ${VDI_MAX_BLOCKS}`);
  if (header.imageType !== VDI_TYPE_DYNAMIC && header.imageType !== VDI_TYPE_STATIC) {
    throw new UnsupportedError({
      format: 'vdi',
      feature: `image type ${header.imageType}`,
      message: `${file}: unsupported VDI image type ${header.imageType}`,
    });
  }
  return header;
}

/** Serializes a header as qemu's create writes it (text banner, header_size 0x180, sector 512). */
export function buildVdiHeader(header: VdiHeader): Buffer {
  const bytes = Buffer.alloc(VDI_HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.write(header.text.slice(0, 0x3f), 0, 'latin1');
  view.setUint32(0x40, VDI_SIGNATURE, true);
  view.setUint32(0x44, header.version, true);
  view.setUint32(0x48, header.headerSizeBytes, true);
  view.setUint32(0x4c, header.imageType, true);
  view.setUint32(0x50, header.imageFlags, true);
  view.setUint32(0x154, header.offsetBmapBytes, true);
  view.setUint32(0x158, header.offsetDataBytes, true);
  view.setUint32(0x168, header.sectorSizeBytes, true);
  setU64le(view, 0x170, header.diskSizeBytes);
  view.setUint32(0x178, header.blockSizeBytes, true);
  view.setUint32(0x17c, header.blockExtraBytes, true);
  view.setUint32(0x180, header.blocksInImage, true);
  view.setUint32(0x184, header.blocksAllocated, true);
  bytes.set(header.uuidImage.subarray(0, 16), 0x188);
  bytes.set(header.uuidLastSnap.subarray(0, 16), 0x198);
  bytes.set(header.uuidLink.subarray(0, 16), 0x1a8);
  bytes.set(header.uuidParent.subarray(0, 16), 0x1b8);
  return bytes;
}
