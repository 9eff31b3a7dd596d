// Parallels disk header (64 bytes, little-endian) and BAT geometry: Buffer <-> typed record, pure.
// Spec: qemu docs/interop/parallels.txt ("Header", "BAT"); limits as qemu 7.2's block/parallels.c.

import { ImageFormatError } from '../../errors.ts';
import { cString, setU64le, u64le, viewOf } from '../common/binary.ts';

export const PARALLELS_MAGIC_V1 = 'WithoutFreeSpace';
export const PARALLELS_MAGIC_EXT = 'WithouFreSpacExt';
export const PARALLELS_VERSION = 2;
export const PARALLELS_HEADER_BYTES = 64;
/** `inuse` value while an image is open for writing (qemu's HEADER_INUSE_MAGIC, "Ynot"). */
export const PARALLELS_INUSE_MAGIC = 0x746f6e59;
export const PARALLELS_HEADS = 16;
export const PARALLELS_SECTORS_PER_CYLINDER = 32;
/** qemu refuses BATs above INT_MAX / 4 entries; vdisk also keeps the table under 256 MiB. */
export const PARALLELS_MAX_BAT_ENTRIES = 64 * 1024 * 1024;

export interface ParallelsHeader {
  /** True for "WithouFreSpacExt": BAT entries count clusters; false ("WithoutFreeSpace"): sectors. */
  isExtended: boolean;
  heads: number;
  cylinders: number;
  /** Cluster size in 512-byte sectors ("tracks"). */
  clusterSectors: number;
  batEntries: number;
  totalSectors: number;
  inuse: number;
  /** Start of the data area, in sectors; 0 means "right after the BAT". */
  dataOffsetSectors: number;
  flags: number;
  extensionOffset: number;
}

/** qemu's bat_entry_off(): byte offset of BAT entry `index`. */
export function batEntryOffsetBytes(index: number): number {
  return PARALLELS_HEADER_BYTES + 4 * index;
}

/** Which magic (if any) the head starts with. */
export function parallelsMagic(head: Uint8Array): 'v1' | 'ext' | undefined {
  if (head.length < PARALLELS_HEADER_BYTES) return undefined;
  const magic = Buffer.from(head.subarray(0, 16)).toString('latin1');
  if (viewOf(head).getUint32(16, true) !== PARALLELS_VERSION) return undefined;
  if (magic === PARALLELS_MAGIC_V1) return 'v1';
  if (magic === PARALLELS_MAGIC_EXT) return 'ext';
  return undefined;
}

/** Parses and validates the header; throws ImageFormatError with the field's offset. */
export function parseParallelsHeader(head: Uint8Array, file: string): ParallelsHeader {
  if (head.length < PARALLELS_HEADER_BYTES)
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in Parallels format' });
  const magic = cString(head, 0, 16);
  if (magic !== PARALLELS_MAGIC_V1 && magic !== PARALLELS_MAGIC_EXT) {
    throw new ImageFormatError({ file, offsetBytes: 0, message: 'Image not in Parallels format' });
  }
  const view = viewOf(head);
  if (view.getUint32(16, true) !== PARALLELS_VERSION) {
    throw new ImageFormatError({
      file,
      offsetBytes: 16,
      message: `Unsupported Parallels version ${view.getUint32(16, true)}`,
    });
  }
  const isExtended = magic === PARALLELS_MAGIC_EXT;
  const header: ParallelsHeader = {
    isExtended,
    heads: view.getUint32(20, true),
    cylinders: view.getUint32(24, true),
    clusterSectors: view.getUint32(28, true),
    batEntries: view.getUint32(32, true),
    // The old format only ever used the low 32 bits of nb_sectors (qemu masks them the same way).
    totalSectors: isExtended ? u64le(head, 36, file) : view.getUint32(36, true),
    inuse: view.getUint32(44, true),
    dataOffsetSectors: view.getUint32(48, true),
    flags: view.getUint32(52, true),
    extensionOffset: u64le(head, 56, file),
  };
  if (header.clusterSectors === 0)
    throw new ImageFormatError({ file, offsetBytes: 28, message: 'Invalid image: Zero sectors per track' });
  if (header.clusterSectors > Math.floor(0x7fffffff / 513))
    throw new ImageFormatError({ file, offsetBytes: 28, message: 'Invalid image: Too big cluster' });
  if (header.batEntries > PARALLELS_MAX_BAT_ENTRIES)
    throw new ImageFormatError({
      file,
      offsetBytes: 32,
      message: `Catalog too large (${header.batEntries} entries)`,
    });
  if (header.totalSectors > Math.floor(Number.MAX_SAFE_INTEGER / 512)) {
    throw new ImageFormatError({
      file,
      offsetBytes: 36,
      message: `Invalid image: ${header.totalSectors} sectors is too large`,
    });
  }
  return header;
}

/** Encodes the 64-byte header. */
export function encodeParallelsHeader(header: ParallelsHeader): Uint8Array {
  const bytes = new Uint8Array(PARALLELS_HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.set(Buffer.from(header.isExtended ? PARALLELS_MAGIC_EXT : PARALLELS_MAGIC_V1, 'latin1'), 0);
  view.setUint32(16, PARALLELS_VERSION, true);
  view.setUint32(20, header.heads, true);
  view.setUint32(24, header.cylinders, true);
  view.setUint32(28, header.clusterSectors, true);
  view.setUint32(32, header.batEntries, true);
  setU64le(view, 36, header.totalSectors);
  view.setUint32(44, header.inuse, true);
  view.setUint32(48, header.dataOffsetSectors, true);
  view.setUint32(52, header.flags, true);
  setU64le(view, 56, header.extensionOffset);
  return bytes;
}
