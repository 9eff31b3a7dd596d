// Opening a qcow2 file: read and validate the header, feature bits, L1 and refcount tables (every size
// bounded by the file and by qemu's limits before anything is allocated), then the backing file.
// Implements qcow2.txt "Header" feature-bit rules (incompatible / compatible / autoclear).

import { CorruptImageError, ImageFormatError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import type { OpenContext } from '../driver.ts';
import { PersistentBitmaps } from './bitmaps.ts';
import { checkDataFileHeader } from './data-file.ts';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  describeUnknownFeatures,
  HEADER_FIELD,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  parseHeader,
  QCOW2_MAX_CLUSTER_BITS,
  QCOW2_MAX_L1_BYTES,
  QCOW2_MAX_REFTABLE_BYTES,
  type Qcow2Header,
} from './header.ts';
import { Qcow2Image } from './image.ts';

/** Incompatible features vdisk implements. */
const KNOWN_INCOMPATIBLE = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;

/** Bytes read first: the header cluster of an image with the default cluster size. */
const FIRST_READ_BYTES = 64 * 1024;

/** Reads the header cluster (or the whole file when shorter) and parses it. */
export async function readHeader(
  file: HostFile,
  path: string,
): Promise<{ header: Qcow2Header; fileSizeBytes: number }> {
  const fileSizeBytes = await file.sizeBytes();
  // parseHeader looks at the first cluster only. Its size is in the header, so most opens read
  // 64 KiB once instead of the largest cluster size (2 MiB, allocated and copied on every open).
  let head = Buffer.alloc(Math.min(fileSizeBytes, FIRST_READ_BYTES));
  let count = await file.read(0, head);
  const clusterBits = count >= 24 ? head.readUInt32BE(20) : QCOW2_MAX_CLUSTER_BITS;
  const clusterSizeBytes = 2 ** Math.min(Math.max(clusterBits, 0), QCOW2_MAX_CLUSTER_BITS);
  if (count === head.length && head.length < Math.min(fileSizeBytes, clusterSizeBytes)) {
    head = Buffer.alloc(Math.min(fileSizeBytes, clusterSizeBytes));
    count = await file.read(0, head);
  }
  const header = parseHeader(head.subarray(0, count), path);
  return { header, fileSizeBytes };
}

/** Throws UnsupportedError for features vdisk cannot honour (naming the bits), ImageFormatError for bad values. */
export function checkFeatures(header: Qcow2Header, path: string): void {
  const unknown = describeUnknownFeatures(
    header,
    'incompatible',
    header.incompatibleFeatures,
    KNOWN_INCOMPATIBLE | INCOMPAT_DATA_FILE | INCOMPAT_EXTL2,
  );
  if (unknown.length > 0) {
    throw new UnsupportedError({
      format: 'qcow2',
      feature: `incompatible feature ${unknown.join(', ')}`,
      message: `${path}: Unsupported qcow2 feature(s): incompatible ${unknown.join(', ')}`,
    });
  }
  checkDataFileHeader(header, path);
  // 1 (legacy AES) and 2 (LUKS) are opened by encryption.ts.
  if (header.cryptMethod > 2)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'encryption',
      message: `${path}: unknown qcow2 crypt_method ${header.cryptMethod}`,
    });
  const hasCompressionBit = (header.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (!hasCompressionBit && header.compressionType !== 0) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: 104,
      message: `compression_type ${header.compressionType} without the compression-type incompatible bit`,
    });
  }
  if (header.compressionType > 1)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: `compression type ${header.compressionType}`,
      message: `${path}: unknown compression type ${header.compressionType}`,
    });
}

/** Validates the L1 and refcount table locations against the file and qemu's limits; reads them. */
export async function readTables(
  file: HostFile,
  path: string,
  header: Qcow2Header,
  fileSizeBytes: number,
): Promise<{ l1: Buffer; refcountTable: Buffer }> {
  const clusterSizeBytes = 2 ** header.clusterBits;
  const l2Entries = clusterSizeBytes / 8;
  const l1Bytes = header.l1EntryCount * 8;
  if (l1Bytes > QCOW2_MAX_L1_BYTES)
    throw new ImageFormatError({
      file: path,
      offsetBytes: HEADER_FIELD.l1Size,
      message: `L1 table of ${header.l1EntryCount} entries is larger than ${QCOW2_MAX_L1_BYTES} bytes`,
    });
  const neededL1 = Math.ceil(header.virtualSizeBytes / clusterSizeBytes / l2Entries);
  if (header.l1EntryCount < neededL1) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: HEADER_FIELD.l1Size,
      message: `L1 table of ${header.l1EntryCount} entries is too small for ${header.virtualSizeBytes} bytes (needs ${neededL1})`,
    });
  }
  if (l1Bytes > 0) {
    if (header.l1TableOffsetBytes % clusterSizeBytes !== 0 || header.l1TableOffsetBytes === 0) {
      throw new ImageFormatError({
        file: path,
        offsetBytes: HEADER_FIELD.l1TableOffset,
        message: `L1 table offset ${header.l1TableOffsetBytes} is not cluster aligned`,
      });
    }
    if (header.l1TableOffsetBytes + l1Bytes > fileSizeBytes) {
      throw new CorruptImageError({
        file: path,
        offsetBytes: header.l1TableOffsetBytes,
        lengthBytes: l1Bytes,
        message: `L1 table lies past the end of the file (${fileSizeBytes} bytes)`,
      });
    }
  }
  const refcountBytes = header.refcountTableClusters * clusterSizeBytes;
  if (header.refcountTableClusters === 0)
    throw new ImageFormatError({
      file: path,
      offsetBytes: HEADER_FIELD.refcountTableClusters,
      message: 'refcount table has no clusters',
    });
  if (refcountBytes > QCOW2_MAX_REFTABLE_BYTES) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: HEADER_FIELD.refcountTableClusters,
      message: `refcount table of ${header.refcountTableClusters} clusters is larger than ${QCOW2_MAX_REFTABLE_BYTES} bytes`,
    });
  }
  if (header.refcountTableOffsetBytes % clusterSizeBytes !== 0 || header.refcountTableOffsetBytes === 0) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: HEADER_FIELD.refcountTableOffset,
      message: `refcount table offset ${header.refcountTableOffsetBytes} is not cluster aligned`,
    });
  }
  if (header.refcountTableOffsetBytes + refcountBytes > fileSizeBytes) {
    throw new CorruptImageError({
      file: path,
      offsetBytes: header.refcountTableOffsetBytes,
      lengthBytes: refcountBytes,
      message: `refcount table lies past the end of the file (${fileSizeBytes} bytes)`,
    });
  }
  const l1 = Buffer.alloc(l1Bytes);
  if (l1Bytes > 0) await file.read(header.l1TableOffsetBytes, l1);
  const refcountTable = Buffer.alloc(refcountBytes);
  await file.read(header.refcountTableOffsetBytes, refcountTable);
  return { l1, refcountTable };
}

/**
 * Opens a qcow2 image as a Qcow2Image (no backing). Writable opens clear unknown autoclear bits and refuse a
 * corrupt image (CorruptImageError); `repairDirty` is called for a dirty image opened writable.
 */
export async function loadImage(
  context: Pick<OpenContext, 'file' | 'path' | 'readOnly'>,
  repairDirty: (image: Qcow2Image) => Promise<void>,
  options: { allowCorrupt?: boolean } = {},
): Promise<Qcow2Image> {
  const { file, path, readOnly } = context;
  const { header, fileSizeBytes } = await readHeader(file, path);
  checkFeatures(header, path);
  if (!readOnly && !options.allowCorrupt && header.incompatibleFeatures & INCOMPAT_CORRUPT) {
    throw new CorruptImageError({
      file: path,
      message: 'qcow2: Image is corrupt; cannot be opened read/write',
      fatal: true,
    });
  }
  const { l1, refcountTable } = await readTables(file, path, header, fileSizeBytes);
  const image = new Qcow2Image({ file, path, header, l1, refcountTable, readOnly });
  let bitmapsBroken = false;
  try {
    image.bitmaps = await PersistentBitmaps.load(image, fileSizeBytes);
  } catch (err) {
    // check reports a broken bitmap directory as a corruption instead of refusing to open.
    if (!options.allowCorrupt) throw err;
    bitmapsBroken = true;
  }
  if (!readOnly && header.version === 3) {
    // Autoclear bits name extensions whose consistency a writer must maintain: vdisk keeps the bitmaps
    // bit (bitmaps.ts updates them) and clears the others.
    const keep =
      (image.bitmaps || bitmapsBroken ? AUTOCLEAR_BITMAPS : 0n) |
      (image.hasDataFile ? AUTOCLEAR_DATA_FILE_RAW : 0n);
    if ((header.autoclearFeatures & ~keep) !== 0n) {
      header.autoclearFeatures &= keep;
      await image.writeHeaderField(HEADER_FIELD.autoclearFeatures, header.autoclearFeatures);
      await file.sync();
    }
    if (header.incompatibleFeatures & INCOMPAT_DIRTY) {
      await repairDirty(image);
      header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
      await image.writeHeaderField(HEADER_FIELD.incompatibleFeatures, header.incompatibleFeatures);
      await file.sync();
    }
  }
  return image;
}
