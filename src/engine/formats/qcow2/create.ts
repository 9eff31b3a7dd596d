// Creating a qcow2 image with qemu-img's option names and defaults, laid out as qemu-img 7.2 lays it out
// (header, refcount table, refcount block, L1 table; preallocated L2 tables each followed by their data),
// so a fresh image is byte-identical to `qemu-img create`'s. Spec: qcow2.txt "Header", "Host cluster management".

import type { BlockDevice } from '../../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import type { CreateContext } from '../driver.ts';
import { COMPRESSION_ZLIB } from './compress.ts';
import {
  COMPAT_LAZY_REFCOUNTS,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  encodeFeatureTable,
  HEADER_FIELD,
  type HeaderExtension,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTL2,
  QCOW2_V3_HEADER_BYTES,
  QEMU_FEATURE_NAMES,
  type Qcow2Header,
  serializeHeader,
} from './header.ts';
import {
  addDataFileToHeader,
  createDataFile,
  type DataFileSettings,
  mapEveryCluster,
  parseDataFileOptions,
} from './data-file.ts';
import { setUpQcow2Luks, takeEncryptOptions } from './encryption.ts';
import { Qcow2Image } from './image.ts';
import { loadImage } from './load.ts';
import { type Qcow2CreateSettings, parseCreateSettings } from './options.ts';
import { writeRefcountEntry } from './refcount.ts';

/** The header record qemu-img 7.2 writes for these settings (L1 fields still empty). */
export function initialHeader(settings: Qcow2CreateSettings): Qcow2Header {
  const clusterSizeBytes = 2 ** settings.clusterBits;
  const extensions: HeaderExtension[] = [];
  if (settings.backingFile && settings.backingFormat)
    extensions.push({ type: EXT_BACKING_FORMAT, data: Buffer.from(settings.backingFormat, 'utf8') });
  // qemu omits the feature-name table when clusters are 4 KiB or smaller (it would crowd the header cluster).
  if (settings.version === 3 && clusterSizeBytes > 4096)
    extensions.push({ type: EXT_FEATURE_TABLE, data: encodeFeatureTable(QEMU_FEATURE_NAMES) });
  return {
    version: settings.version,
    backingFileOffsetBytes: 0,
    backingFileSizeBytes: 0,
    clusterBits: settings.clusterBits,
    virtualSizeBytes: settings.sizeBytes,
    cryptMethod: 0,
    l1EntryCount: 0,
    l1TableOffsetBytes: 0,
    refcountTableOffsetBytes: clusterSizeBytes,
    refcountTableClusters: 1,
    snapshotCount: 0,
    snapshotsOffsetBytes: 0,
    incompatibleFeatures:
      (settings.compressionType !== COMPRESSION_ZLIB ? INCOMPAT_COMPRESSION : 0n) |
      (settings.extendedL2 ? INCOMPAT_EXTL2 : 0n),
    compatibleFeatures: settings.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: 0n,
    refcountOrder: settings.refcountOrder,
    headerLengthBytes: settings.version === 3 ? QCOW2_V3_HEADER_BYTES : 72,
    compressionType: settings.compressionType,
    extensions,
    backingFileName: settings.backingFile,
    backingFormat: settings.backingFormat,
    featureNames: [],
  };
}

/** Creates the image in `context.file`. Throws InvalidOptionError for bad options. */
export async function createQcow2(context: CreateContext): Promise<void> {
  let sizeBytes = context.sizeBytes;
  const backingFile = context.backingFile ?? context.options.backing_file;
  const backingFormat = context.backingFormat ?? context.options.backing_fmt;
  const options = { ...context.options };
  delete options.size;
  delete options.backing_file;
  delete options.backing_fmt;
  if (!(sizeBytes > 0) && backingFile && context.openBacking) {
    const backing: BlockDevice = await context.openBacking(backingFile, backingFormat);
    try {
      sizeBytes = backing.sizeBytes;
    } finally {
      await backing.close();
    }
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0)
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: 'Image size must be a non-negative integer',
    });
  const encryptOptions = takeEncryptOptions(options);
  const settings = parseCreateSettings(sizeBytes, options, backingFile, backingFormat);
  if (encryptOptions && settings.preallocation !== 'off')
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'preallocation with encryption',
      message: `preallocation=${settings.preallocation} with encryption is not supported`,
    });
  const dataFile = parseDataFileOptions(options, settings.version, backingFile);
  if (dataFile) {
    if (encryptOptions)
      throw new UnsupportedError({
        format: 'qcow2',
        feature: 'data_file with encryption',
        message: 'vdisk does not create encrypted images with an external data file',
      });
    if (settings.preallocation !== 'off' || settings.extendedL2)
      throw new InvalidOptionError({
        option: settings.extendedL2 ? 'extended_l2' : 'preallocation',
        value: settings.extendedL2 ? 'on' : settings.preallocation,
        message:
          'vdisk creates images with an external data file only with preallocation=off and extended_l2=off',
      });
    await createDataFile(context.openDataFile, dataFile, settings.sizeBytes, context.path);
  }
  await writeQcow2(context, settings, dataFile);
  if (encryptOptions) await setUpQcow2Luks(context, encryptOptions);
}

/** Writes a new image with `settings` into `context.file` (truncated first). */
export async function writeQcow2(
  context: Pick<CreateContext, 'file' | 'path'>,
  settings: Qcow2CreateSettings,
  dataFile?: DataFileSettings,
): Promise<void> {
  const { file, path } = context;
  const clusterSizeBytes = 2 ** settings.clusterBits;
  const header = initialHeader(settings);
  if (dataFile) addDataFileToHeader(header, dataFile);
  await file.truncate(0);
  // Cluster 0: header; 1: refcount table naming the block in 2; 2: refcount block with clusters 0-2 in use.
  await file.write(0, serializeHeader(header, path));
  const refcountTable = Buffer.alloc(clusterSizeBytes);
  refcountTable.writeBigUInt64BE(BigInt(2 * clusterSizeBytes), 0);
  await file.write(clusterSizeBytes, refcountTable);
  const block = Buffer.alloc(clusterSizeBytes);
  for (let clusterIndex = 0; clusterIndex < 3; clusterIndex++)
    writeRefcountEntry(block, clusterIndex, settings.refcountOrder, 1);
  await file.write(2 * clusterSizeBytes, block);

  const parsed = { ...header, refcountTableOffsetBytes: clusterSizeBytes };
  const image = new Qcow2Image({
    file,
    path,
    header: parsed,
    l1: Buffer.alloc(0),
    refcountTable,
    readOnly: false,
  });
  const l2Coverage = clusterSizeBytes * (clusterSizeBytes / (settings.extendedL2 ? 16 : 8));
  const l1EntryCount = Math.ceil(settings.sizeBytes / l2Coverage);
  if (l1EntryCount > 0) {
    const l1Bytes = l1EntryCount * 8;
    const l1Cluster = await image.refcounts.allocateClusters(Math.ceil(l1Bytes / clusterSizeBytes));
    await image.refcounts.flush();
    const l1OffsetBytes = l1Cluster * clusterSizeBytes;
    // qemu writes exactly the L1 bytes, so the file ends at the end of the table.
    await file.write(l1OffsetBytes, Buffer.alloc(l1Bytes));
    const fields = Buffer.alloc(12);
    fields.writeUInt32BE(l1EntryCount, 0);
    fields.writeBigUInt64BE(BigInt(l1OffsetBytes), 4);
    await file.write(HEADER_FIELD.l1Size, fields);
  }
  if (settings.preallocation !== 'off' && l1EntryCount > 0) {
    await preallocate(file, path, settings);
  }
  if (dataFile?.raw && l1EntryCount > 0)
    await mapEveryCluster(await loadImage({ file, path, readOnly: false }, async () => undefined));
  await file.sync();
}

/** Allocates every L2 table and data cluster (qemu's preallocate_co): each L2 table, then the clusters it maps. */
async function preallocate(
  file: CreateContext['file'],
  path: string,
  settings: Qcow2CreateSettings,
): Promise<void> {
  const image = await loadImage({ file, path, readOnly: false }, async () => undefined);
  const clusterSizeBytes = image.clusterSizeBytes;
  const guestClusters = Math.ceil(settings.sizeBytes / clusterSizeBytes);
  if (settings.preallocation !== 'metadata') {
    // qemu sizes the file first and gives it a refcount table covering the whole of it, placed after the L1.
    const l2Tables = Math.ceil(guestClusters / image.l2EntryCount);
    const fileClusters =
      image.refcounts.tableLocation.clusterCount +
      3 +
      Math.ceil((image.l1EntryCount * 8) / clusterSizeBytes) +
      l2Tables +
      guestClusters;
    await image.refcounts.moveTable(Math.ceil(fileClusters / image.refcounts.entriesPerBlock));
  }
  const runs: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  for (let guestCluster = 0; guestCluster < guestClusters; ) {
    const l2OffsetBytes = await image.writableL2(guestCluster);
    const count = Math.min(image.clustersLeftInL2(guestCluster), guestClusters - guestCluster);
    const hostCluster = await image.refcounts.allocateClusters(count);
    for (let index = 0; index < count; index++) {
      await image.setL2Entry(
        l2OffsetBytes,
        (guestCluster + index) % image.l2EntryCount,
        image.entryPreallocated((hostCluster + index) * clusterSizeBytes),
      );
    }
    runs.push({ offsetBytes: hostCluster * clusterSizeBytes, lengthBytes: count * clusterSizeBytes });
    guestCluster += count;
  }
  if (settings.preallocation === 'full') {
    const chunk = Buffer.alloc(
      Math.min(
        8 * 1024 * 1024,
        runs.reduce((most, run) => Math.max(most, run.lengthBytes), 0),
      ),
    );
    for (const run of runs) {
      for (let done = 0; done < run.lengthBytes; done += chunk.length) {
        await file.write(
          run.offsetBytes + done,
          chunk.subarray(0, Math.min(chunk.length, run.lengthBytes - done)),
        );
      }
    }
  } else if (settings.preallocation === 'falloc' && file.allocate) {
    for (const run of runs) await file.allocate(run.offsetBytes, run.lengthBytes);
  }
  // Data before metadata: the L2 tables are written by flush() after the data they name.
  await image.flush();
  const last = runs[runs.length - 1];
  const dataEnd = last ? last.offsetBytes + last.lengthBytes : 0;
  if (dataEnd > (await file.sizeBytes())) await file.truncate(dataEnd);
}
