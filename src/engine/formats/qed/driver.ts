// QED (QEMU Enhanced Disk): open/create/read/write/check on the shared map-based device; ends with the
// driver record, the folder's only export. Spec: qemu docs/interop/qed_spec.txt; behaviour (need-check
// bit around allocating writes, defaults 64 KiB clusters and 4-cluster tables) as qemu 7.2's block/qed.c.

import type { BlockDevice, ImageInfo } from '../../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { sizeOption } from '../../size.ts';
import { cString, readExact } from '../common/binary.ts';
import { MappedDevice, type RangeMapping, reportBackingName } from '../common/mapped-device.ts';
import type {
  CheckReport,
  CreateContext,
  CreateOptionSpec,
  FormatDriver,
  OpenContext,
  RepairMode,
} from '../driver.ts';
import { writeQedBackingFile } from './backing.ts';
import { checkQedTables, qedNeedsCheck } from './check.ts';
import {
  checkQedGeometry,
  encodeQedHeader,
  isQedHead,
  parseQedHeader,
  QED_F_BACKING_FILE,
  QED_F_BACKING_FORMAT_NO_PROBE,
  QED_CLUSTER_ZERO,
  QED_F_NEED_CHECK,
  QED_HEADER_BYTES,
  type QedHeader,
  qedMaxImageBytes,
} from './header.ts';
import { QedTables } from './tables.ts';
import { measureQed } from './measure.ts';

class QedDevice extends MappedDevice {
  private header: QedHeader;
  private readonly tables: QedTables;
  private backingName: string | undefined;

  constructor(
    context: OpenContext,
    header: QedHeader,
    tables: QedTables,
    backing: BlockDevice | undefined,
    backingName: string | undefined,
  ) {
    super({
      formatName: 'qed',
      path: context.path,
      file: context.file,
      sizeBytes: header.imageSizeBytes,
      isReadOnly: context.readOnly,
      backing,
    });
    this.header = header;
    this.tables = tables;
    this.backingName = backingName;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const clusterBytes = this.header.clusterSizeBytes;
    const clusterIndex = Math.floor(offsetBytes / clusterBytes);
    const inCluster = offsetBytes % clusterBytes;
    const lengthBytes = clusterBytes - inCluster;
    const found = await this.tables.lookup(clusterIndex);
    if (found.kind === 'data')
      return { kind: 'data', lengthBytes, hostOffsetBytes: found.hostOffsetBytes + inCluster };
    // Whole unallocated L2 tables are skipped in one step, so block status of a sparse image is fast.
    if (
      found.kind === 'unallocated' &&
      this.tables.l1Entry(Math.floor(clusterIndex / this.tables.entriesPerTable)) === 0
    ) {
      const tableSpanBytes = this.tables.entriesPerTable * clusterBytes;
      return {
        kind: 'unallocated',
        lengthBytes: Math.min(tableSpanBytes - (offsetBytes % tableSpanBytes), maxLengthBytes),
      };
    }
    return { kind: found.kind, lengthBytes };
  }

  protected override allocationUnitBytes(): number {
    return this.header.clusterSizeBytes;
  }

  protected override async reserveUnit(unitIndex: number): Promise<number> {
    await this.markNeedCheck(true);
    await this.tables.ensureL2(unitIndex);
    return this.tables.allocate(this.header.clusterSizeBytes);
  }

  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    await this.tables.setCluster(unitIndex, hostOffsetBytes);
  }

  /** A zero-cluster entry (spec: "Zero clusters") hides the backing file's bytes without data. */
  protected override async zeroUnallocatedUnit(unitIndex: number): Promise<boolean> {
    await this.markNeedCheck(true);
    await this.tables.ensureL2(unitIndex);
    await this.tables.setCluster(unitIndex, QED_CLUSTER_ZERO);
    return true;
  }

  /** Sets or clears QED_F_NEED_CHECK: set (and synced) before the first allocation, cleared on flush. */
  private async markNeedCheck(needCheck: boolean): Promise<void> {
    if (qedNeedsCheck(this.header) === needCheck) return;
    this.header = {
      ...this.header,
      features: needCheck
        ? this.header.features | QED_F_NEED_CHECK
        : this.header.features & ~QED_F_NEED_CHECK,
    };
    if (!needCheck) await this.file.sync();
    await this.file.write(0, encodeQedHeader(this.header));
    if (needCheck) await this.file.sync();
  }

  protected override async flushMetadata(): Promise<void> {
    await this.markNeedCheck(false);
  }

  /** Rewrites the backing file name (backing.ts); the open backing device stays until reopened. */
  setBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    return this.exclusive(async () => {
      this.header = await writeQedBackingFile(this.file, this.path, this.header, name, format);
      this.backingName = name === undefined || name === '' ? undefined : name;
    });
  }

  /** Grows the image (qemu's bdrv_qed_co_truncate: shrinking is not supported). */
  resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    return this.exclusive(() => this.resizeUnlocked(sizeBytes, options));
  }

  private async resizeUnlocked(sizeBytes: number, _options: { shrink: boolean }): Promise<void> {
    const { clusterSizeBytes, tableClusters } = this.header;
    if (sizeBytes % 512 !== 0 || sizeBytes > qedMaxImageBytes(clusterSizeBytes, tableClusters)) {
      throw new InvalidOptionError({
        option: 'size',
        value: sizeBytes,
        message: 'Invalid image size specified',
      });
    }
    if (sizeBytes < this.header.imageSizeBytes) {
      throw new UnsupportedError({
        format: 'qed',
        feature: 'shrink',
        message: `${this.path}: Shrinking images is currently not supported`,
      });
    }
    this.header = { ...this.header, imageSizeBytes: sizeBytes };
    await this.file.write(0, encodeQedHeader(this.header));
    await this.file.sync();
    this.currentSizeBytes = sizeBytes;
  }

  override async info(): Promise<ImageInfo> {
    const info: ImageInfo = {
      ...(await super.info()),
      clusterSizeBytes: this.header.clusterSizeBytes,
      dirty: qedNeedsCheck(this.header),
    };
    reportBackingName(info, this.backingName);
    if (this.backingName !== undefined && this.header.features & QED_F_BACKING_FORMAT_NO_PROBE)
      info.backingFormat = 'raw';
    return info;
  }
}

async function readHeader(
  context: OpenContext,
): Promise<{ header: QedHeader; backingName: string | undefined }> {
  const headerBytes = await readExact(context.file, 0, QED_HEADER_BYTES, 'QED header');
  const header = parseQedHeader(headerBytes, context.path);
  let backingName: string | undefined;
  if (header.features & QED_F_BACKING_FILE) {
    const nameBytes = await readExact(
      context.file,
      header.backingFilenameOffsetBytes,
      header.backingFilenameSizeBytes,
      'QED backing file name',
    );
    backingName = cString(nameBytes, 0, nameBytes.length);
  }
  return { header, backingName };
}

async function openQed(context: OpenContext): Promise<BlockDevice> {
  let { header, backingName } = await readHeader(context);
  if (!context.readOnly && qedNeedsCheck(header)) {
    // As qemu does on a read-write open of an image that was not closed cleanly: check (and repair)
    // first, then read the header again; a clean check has cleared the need-check bit.
    await checkQed(context, 'all');
    ({ header, backingName } = await readHeader(context));
  }
  const tables = await QedTables.load(context.file, context.path, header);
  let backing: BlockDevice | undefined;
  if (backingName !== undefined && context.openBacking) {
    backing = await context.openBacking(
      backingName,
      header.features & QED_F_BACKING_FORMAT_NO_PROBE ? 'raw' : undefined,
    );
  }
  return new QedDevice(context, header, tables, backing, backingName);
}

async function checkQed(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  const { header } = await readHeader(context);
  const tables = await QedTables.load(context.file, context.path, header);
  const fileSizeBytes = await context.file.sizeBytes();
  const l1 = await readExact(context.file, header.l1TableOffsetBytes, tables.tableBytes, 'QED L1 table');
  const report = await checkQedTables({
    tables,
    header,
    fileSizeBytes,
    repair: context.readOnly ? 'none' : repair,
    l1,
    readL2: (offsetBytes) => readExact(context.file, offsetBytes, tables.tableBytes, 'QED L2 table'),
    writeEntry: (tableOffsetBytes, index, table) =>
      context.file.write(tableOffsetBytes + index * 8, table.subarray(index * 8, index * 8 + 8)),
  });
  if (!context.readOnly && repair !== 'none' && report.corruptions === 0 && qedNeedsCheck(header)) {
    await context.file.write(
      0,
      encodeQedHeader({ ...header, features: header.features & ~QED_F_NEED_CHECK }),
    );
    await context.file.sync();
  }
  return report;
}

async function createQed(context: CreateContext): Promise<void> {
  const clusterSizeBytes = sizeOption(context.options, 'cluster_size', 64 * 1024);
  const tableClusters = sizeOption(context.options, 'table_size', 4);
  checkQedGeometry(clusterSizeBytes, tableClusters, context.path);
  if (tableClusters === 1) {
    // qemu 7.2's table offset check (end <= start counts as overflow) refuses one-cluster tables.
    throw new InvalidOptionError({
      option: 'table_size',
      value: 1,
      message: 'QED table_size=1 makes images qemu cannot open; use 2 or more',
    });
  }
  const sizeBytes = context.sizeBytes;
  if (sizeBytes % 512 !== 0 || sizeBytes > qedMaxImageBytes(clusterSizeBytes, tableClusters)) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: `QED image size must be a non-zero multiple of cluster size and less than ${qedMaxImageBytes(clusterSizeBytes, tableClusters)} bytes`,
    });
  }
  const backingFile = context.backingFile ?? context.options.backing_file;
  const backingFormat = context.backingFormat ?? context.options.backing_fmt;
  const nameBytes = backingFile === undefined ? new Uint8Array(0) : Buffer.from(backingFile, 'utf8');
  if (nameBytes.length > 1023 || QED_HEADER_BYTES + nameBytes.length > clusterSizeBytes) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: backingFile,
      message: 'QED backing file name is too long',
    });
  }
  let features = 0;
  if (backingFile !== undefined) features |= QED_F_BACKING_FILE;
  if (backingFile !== undefined && backingFormat === 'raw') features |= QED_F_BACKING_FORMAT_NO_PROBE;
  const header: QedHeader = {
    clusterSizeBytes,
    tableClusters,
    headerClusters: 1,
    features,
    compatFeatures: 0,
    autoclearFeatures: 0,
    l1TableOffsetBytes: clusterSizeBytes,
    imageSizeBytes: sizeBytes,
    backingFilenameOffsetBytes: backingFile === undefined ? 0 : QED_HEADER_BYTES,
    backingFilenameSizeBytes: nameBytes.length,
  };
  await context.file.truncate(0);
  await context.file.write(0, encodeQedHeader(header));
  if (nameBytes.length > 0) await context.file.write(QED_HEADER_BYTES, nameBytes);
  // The L1 table is all zeros: extending the file is enough.
  await context.file.truncate(clusterSizeBytes + tableClusters * clusterSizeBytes);
  await context.file.sync();
}

export const qedCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'cluster_size', type: 'size', help: 'Cluster size (in bytes)', default: 65536 },
  { name: 'table_size', type: 'number', help: 'L1/L2 table size (in clusters)', default: 4 },
];

export const qedDriver = {
  name: 'qed',
  description: 'QEMU Enhanced Disk',
  probe: (head: Uint8Array) => (isQedHead(head) ? 100 : 0),
  capabilities: {
    create: true,
    write: true,
    backing: true,
    internalSnapshots: false,
    check: true,
    compression: [],
    encryption: [],
    resize: 'grow',
    concurrentWrites: false,
  },
  createOptions: qedCreateOptions,
  open: openQed,
  create: createQed,
  check: checkQed,
  measure: measureQed,
} satisfies FormatDriver;
