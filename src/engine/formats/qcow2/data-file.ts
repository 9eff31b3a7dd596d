// External data files (qcow2.txt "External data file name" header extension, incompatible bit 2
// "external data file", autoclear bit 1 "raw external data"): guest data lives in another file at the
// guest offset itself, the qcow2 file keeps only metadata, and data clusters have no refcounts. With
// data_file_raw the data file is also a valid raw image: every cluster is mapped at create (as qemu
// does) and zeroed or discarded ranges are zeroed in the data file too. Name resolution and the
// escape rule live in open.ts (relative to the image's folder; qemu 7.2 uses the current directory).

import { ImageFormatError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import type { OpenDataFileFn } from '../driver.ts';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  EXT_BACKING_FORMAT,
  EXT_DATA_FILE,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  type Qcow2Header,
} from './header.ts';
import { rewriteHeaderCluster } from './backing.ts';
import type { Qcow2Image } from './image.ts';

/** qemu's limit on the data file name (it shares the header cluster with the other extensions). */
const MAX_DATA_FILE_NAME_BYTES = 1023;

export function hasDataFile(header: Qcow2Header): boolean {
  return (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
}

export function isDataFileRaw(header: Qcow2Header): boolean {
  return hasDataFile(header) && (header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
}

/** The data file name from the header extension (undefined when the image has none). */
export function dataFileName(header: Qcow2Header): string | undefined {
  const extension = header.extensions.find((candidate) => candidate.type === EXT_DATA_FILE);
  return extension?.data.toString('utf8').replace(/\0.*$/s, '');
}

/** Checks the data-file bits against the extension and the features vdisk combines with them. */
export function checkDataFileHeader(header: Qcow2Header, path: string): void {
  if (!hasDataFile(header)) return;
  const name = dataFileName(header);
  if (!name)
    throw new ImageFormatError({
      file: path,
      message: 'the external data file bit is set but no data file name extension is present',
    });
  if (header.incompatibleFeatures & INCOMPAT_EXTL2)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'data_file with extended_l2',
      message: `${path}: external data files with extended L2 entries are not supported`,
    });
}

/** Opens the data file an image names and attaches it (guest I/O then goes there). */
export async function attachDataFile(
  image: Qcow2Image,
  openDataFile: OpenDataFileFn | undefined,
): Promise<void> {
  const name = dataFileName(image.header);
  if (!hasDataFile(image.header) || name === undefined) return;
  if (!openDataFile)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'data_file',
      message: `${image.path}: the external data file '${name}' cannot be opened here`,
    });
  image.dataFile = await openDataFile(name, {});
  image.openDataFile = openDataFile;
}

/**
 * qemu-img amend's data_file (rename the data file an image uses; the new name is opened first, so it
 * must exist and obey the folder rule) and data_file_raw (may only be turned off, as in qemu). Checks
 * everything before amend writes anything; returns the change to apply last, or undefined.
 */
export async function prepareDataFileAmend(
  image: Qcow2Image,
  options: Record<string, string>,
): Promise<(() => Promise<void>) | undefined> {
  const name = options.data_file;
  const rawText = options.data_file_raw;
  if (name === undefined && rawText === undefined) return undefined;
  if (!hasDataFile(image.header)) {
    throw new InvalidOptionError({
      option: name !== undefined ? 'data_file' : 'data_file_raw',
      value: name ?? rawText,
      message: 'data-file can only be set for images that use an external data file',
    });
  }
  let raw = isDataFileRaw(image.header);
  if (rawText !== undefined) {
    const on = ['on', 'true', 'yes'].includes(rawText);
    if (!on && !['off', 'false', 'no'].includes(rawText))
      throw new InvalidOptionError({
        option: 'data_file_raw',
        value: rawText,
        message: "Parameter 'data_file_raw' expects 'on' or 'off'",
      });
    if (on && !raw)
      throw new InvalidOptionError({
        option: 'data_file_raw',
        value: rawText,
        message: 'data-file-raw cannot be set on existing images',
      });
    raw = on;
  }
  let opened: HostFile | undefined;
  if (name !== undefined && name !== dataFileName(image.header)) {
    if (name === '' || Buffer.byteLength(name) > MAX_DATA_FILE_NAME_BYTES)
      throw new InvalidOptionError({ option: 'data_file', value: name, message: 'Invalid data file name' });
    if (!image.openDataFile) throw new UnsupportedError({ format: 'qcow2', feature: 'amend data_file' });
    opened = await image.openDataFile(name, {});
  }
  return async () => {
    const next = { ...image.header, extensions: [...image.header.extensions] };
    if (opened && name !== undefined) {
      next.extensions = next.extensions.map((extension) =>
        extension.type === EXT_DATA_FILE
          ? { type: EXT_DATA_FILE, data: Buffer.from(name, 'utf8') }
          : extension,
      );
    }
    next.autoclearFeatures = raw
      ? next.autoclearFeatures | AUTOCLEAR_DATA_FILE_RAW
      : next.autoclearFeatures & ~AUTOCLEAR_DATA_FILE_RAW;
    await rewriteHeaderCluster(image, next);
    if (opened) {
      await image.dataFile?.close();
      image.dataFile = opened;
    }
  };
}

export interface DataFileSettings {
  name: string;
  raw: boolean;
}

/** Parses `-o data_file=NAME,data_file_raw=on|off` with qemu's rules; undefined without data_file. */
export function parseDataFileOptions(
  options: Record<string, string>,
  version: 2 | 3,
  backingFile: string | undefined,
): DataFileSettings | undefined {
  const name = options.data_file;
  const rawText = options.data_file_raw;
  const raw = rawText === 'on' || rawText === 'true' || rawText === 'yes';
  if (rawText !== undefined && !raw && !['off', 'false', 'no'].includes(rawText))
    throw new InvalidOptionError({
      option: 'data_file_raw',
      value: rawText,
      message: "Parameter 'data_file_raw' expects 'on' or 'off'",
    });
  if (name === undefined) {
    if (raw)
      throw new InvalidOptionError({
        option: 'data_file_raw',
        value: rawText,
        message: 'data-file-raw requires data-file',
      });
    return undefined;
  }
  if (name === '' || Buffer.byteLength(name) > MAX_DATA_FILE_NAME_BYTES)
    throw new InvalidOptionError({ option: 'data_file', value: name, message: 'Invalid data file name' });
  if (version === 2)
    throw new InvalidOptionError({
      option: 'data_file',
      value: name,
      message: 'External data files are only supported with compatibility level 1.1 and above',
    });
  if (raw && backingFile)
    throw new InvalidOptionError({
      option: 'data_file_raw',
      value: rawText,
      message: 'Backing file and data_file_raw cannot be used together',
    });
  return { name, raw };
}

/** The header bits and extension for `settings`, added to a header being created. */
export function addDataFileToHeader(header: Qcow2Header, settings: DataFileSettings): void {
  header.incompatibleFeatures |= INCOMPAT_DATA_FILE;
  if (settings.raw) header.autoclearFeatures |= AUTOCLEAR_DATA_FILE_RAW;
  // qemu's order: backing format, data file, crypto header, feature table, bitmaps.
  const after = header.extensions.findIndex((extension) => extension.type !== EXT_BACKING_FORMAT);
  header.extensions.splice(after < 0 ? header.extensions.length : after, 0, {
    type: EXT_DATA_FILE,
    data: Buffer.from(settings.name, 'utf8'),
  });
}

/** Creates the data file (empty, sized to the guest) as qemu-img create does. */
export async function createDataFile(
  openDataFile: OpenDataFileFn | undefined,
  settings: DataFileSettings,
  sizeBytes: number,
  path: string,
): Promise<void> {
  if (!openDataFile)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'data_file',
      message: `${path}: cannot create the data file '${settings.name}' here`,
    });
  const file: HostFile = await openDataFile(settings.name, { create: true });
  try {
    await file.truncate(sizeBytes);
    await file.sync();
  } finally {
    await file.close();
  }
}

/** data_file_raw: every guest cluster mapped at its own offset, so the data file alone is the disk. */
export async function mapEveryCluster(image: Qcow2Image): Promise<void> {
  const clusterSizeBytes = image.clusterSizeBytes;
  const guestClusters = Math.ceil(image.header.virtualSizeBytes / clusterSizeBytes);
  for (let guestCluster = 0; guestCluster < guestClusters; guestCluster++) {
    const l2OffsetBytes = await image.writableL2(guestCluster);
    await image.setL2Entry(
      l2OffsetBytes,
      guestCluster % image.l2EntryCount,
      image.entryNormal(guestCluster * clusterSizeBytes),
    );
  }
  await image.flush();
}

/** Zeroes [offsetBytes, +lengthBytes) of a raw data file (a hole where the file system can punch one). */
export async function zeroDataFileRange(
  file: HostFile,
  offsetBytes: number,
  lengthBytes: number,
): Promise<void> {
  if (lengthBytes <= 0) return;
  if (file.punchHole && (await file.punchHole(offsetBytes, lengthBytes))) return;
  const chunk = Buffer.alloc(Math.min(lengthBytes, 1024 * 1024));
  for (let done = 0; done < lengthBytes; done += chunk.length)
    await file.write(offsetBytes + done, chunk.subarray(0, Math.min(chunk.length, lengthBytes - done)));
}
