// qcow (version 1): open/create/read/write with backing files and compressed (raw deflate) clusters, on
// the shared map-based device; ends with the driver record. Layout and allocation rules as qemu 7.2's
// block/qcow.c: L1 in memory, L2 tables and clusters appended at the cluster-aligned end of the file.

import { deflateRawSync, inflateRawSync } from '../../lazy-zlib.ts';
import type { BlockDevice, ImageInfo } from '../../block-device.ts';
import { legacyAesCipher } from '../../crypto/legacy-aes.ts';
import { CRYPT_SECTOR_BYTES, type SectorCipher } from '../../crypto/sector-cipher.ts';
import { lookupSecret } from '../../crypto/secrets.ts';
import { CorruptImageError, ImageFormatError, InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { cString, readExact, setU64be, viewOf } from '../common/binary.ts';
import { decodedRange, MappedDevice, type RangeMapping, reportBackingName } from '../common/mapped-device.ts';
import type { CreateContext, CreateOptionSpec, FormatDriver, OpenContext } from '../driver.ts';
import {
  encodeQcowHeader,
  isQcowHead,
  parseQcowHeader,
  QCOW_CRYPT_AES,
  QCOW_HEADER_BYTES,
  QCOW_OFLAG_COMPRESSED,
  type QcowHeader,
  qcowL1Entries,
} from './header.ts';

const L2_CACHE_TABLES = 16;

type QcowLookup =
  | { kind: 'unallocated' }
  | { kind: 'data'; hostOffsetBytes: number }
  | { kind: 'compressed'; hostOffsetBytes: number; compressedBytes: number };

class QcowDevice extends MappedDevice {
  private readonly header: QcowHeader;
  private readonly l1: Uint8Array;
  private readonly clusterBytes: number;
  private readonly l2Entries: number;
  private readonly l2Cache = new Map<number, Uint8Array>();
  private readonly backingName: string | undefined;
  private fileEndBytes: number;
  private cachedCluster: { hostOffsetBytes: number; plain: Uint8Array } | undefined;
  /** Legacy AES (crypt_method 1): data clusters decipher with the IV of their guest sector. */
  private readonly aes: { cipher: SectorCipher | undefined } | undefined;

  constructor(
    context: OpenContext,
    header: QcowHeader,
    l1: Uint8Array,
    fileSizeBytes: number,
    backing: BlockDevice | undefined,
    backingName: string | undefined,
    aes: { cipher: SectorCipher | undefined } | undefined,
  ) {
    super({
      formatName: 'qcow',
      path: context.path,
      file: context.file,
      sizeBytes: header.sizeBytes,
      isReadOnly: context.readOnly,
      backing,
    });
    this.header = header;
    this.l1 = l1;
    this.clusterBytes = 2 ** header.clusterBits;
    this.l2Entries = 2 ** header.l2Bits;
    this.fileEndBytes = fileSizeBytes;
    this.backingName = backingName;
    this.aes = aes;
  }

  /** The plaintext of the AES-encrypted data cluster `clusterIndex` stored at `hostOffsetBytes`. */
  private async decryptCluster(clusterIndex: number, hostOffsetBytes: number): Promise<Uint8Array> {
    if (this.cachedCluster?.hostOffsetBytes === hostOffsetBytes) return this.cachedCluster.plain;
    const cipher = this.aes?.cipher;
    if (!cipher)
      throw new InvalidOptionError({
        option: 'encrypt.key-secret',
        message: `${this.path}: Parameter 'encrypt.key-secret' is required for cipher`,
      });
    const stored = new Uint8Array(this.clusterBytes);
    const count = await this.file.read(hostOffsetBytes, stored);
    stored.fill(0, count);
    const plain = cipher.decrypt(stored, (clusterIndex * this.clusterBytes) / CRYPT_SECTOR_BYTES);
    this.cachedCluster = { hostOffsetBytes, plain };
    return plain;
  }

  private entry(table: Uint8Array, index: number): bigint {
    return viewOf(table).getBigUint64(index * 8, false);
  }

  private async l2Table(l2OffsetBytes: number, l1Index: number): Promise<Uint8Array> {
    const cached = this.l2Cache.get(l2OffsetBytes);
    if (cached) return cached;
    const tableBytes = this.l2Entries * 8;
    if (l2OffsetBytes + tableBytes > this.fileEndBytes) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: this.header.l1TableOffsetBytes + l1Index * 8,
        lengthBytes: 8,
        message: `L1 entry ${l1Index} points to an L2 table past the end of the file (${l2OffsetBytes})`,
      });
    }
    const table = await readExact(this.file, l2OffsetBytes, tableBytes, 'qcow L2 table');
    this.cacheL2(l2OffsetBytes, table);
    return table;
  }

  private cacheL2(offsetBytes: number, table: Uint8Array): void {
    this.l2Cache.set(offsetBytes, table);
    if (this.l2Cache.size > L2_CACHE_TABLES) this.l2Cache.delete(this.l2Cache.keys().next().value!);
  }

  private async lookup(clusterIndex: number): Promise<QcowLookup> {
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    const l2OffsetBytes = this.safe(
      this.entry(this.l1, l1Index),
      this.header.l1TableOffsetBytes + l1Index * 8,
    );
    if (l2OffsetBytes === 0) return { kind: 'unallocated' };
    const table = await this.l2Table(l2OffsetBytes, l1Index);
    const l2Index = clusterIndex % this.l2Entries;
    const raw = this.entry(table, l2Index);
    const entryAt = l2OffsetBytes + l2Index * 8;
    if (raw === 0n) return { kind: 'unallocated' };
    if (raw & QCOW_OFLAG_COMPRESSED) {
      // qcow.c: the size sits above bit (63 - cluster_bits), the offset below it.
      const sizeShift = BigInt(63 - this.header.clusterBits);
      const hostOffsetBytes = this.safe(raw & ((1n << sizeShift) - 1n), entryAt);
      const compressedBytes = Number((raw >> sizeShift) & BigInt(this.clusterBytes - 1));
      if (hostOffsetBytes + compressedBytes > this.fileEndBytes) {
        throw new CorruptImageError({
          file: this.path,
          offsetBytes: entryAt,
          lengthBytes: 8,
          message: `compressed cluster ${clusterIndex} lies past the end of the file`,
        });
      }
      return { kind: 'compressed', hostOffsetBytes, compressedBytes };
    }
    const hostOffsetBytes = this.safe(raw, entryAt);
    if (hostOffsetBytes >= this.fileEndBytes || hostOffsetBytes % 512 !== 0) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: entryAt,
        lengthBytes: 8,
        message: `L2 entry for cluster ${clusterIndex} points outside the file (${hostOffsetBytes})`,
      });
    }
    return { kind: 'data', hostOffsetBytes };
  }

  private safe(value: bigint, atBytes: number): number {
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: atBytes,
        lengthBytes: 8,
        message: `table entry ${value} is out of range`,
      });
    }
    return Number(value);
  }

  private async decompress(hostOffsetBytes: number, compressedBytes: number): Promise<Uint8Array> {
    if (this.cachedCluster?.hostOffsetBytes === hostOffsetBytes) return this.cachedCluster.plain;
    const compressed = await readExact(
      this.file,
      hostOffsetBytes,
      compressedBytes,
      'qcow compressed cluster',
    );
    let plain: Buffer;
    try {
      plain = inflateRawSync(compressed, {
        maxOutputLength: this.clusterBytes,
        finishFlush: 2 /* Z_SYNC_FLUSH */,
      });
    } catch (err) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: hostOffsetBytes,
        lengthBytes: compressedBytes,
        message: 'compressed cluster does not inflate to one cluster',
        cause: err,
      });
    }
    if (plain.length !== this.clusterBytes) {
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: hostOffsetBytes,
        lengthBytes: compressedBytes,
        message: `compressed cluster inflates to ${plain.length} bytes, not ${this.clusterBytes}`,
      });
    }
    this.cachedCluster = { hostOffsetBytes, plain };
    return plain;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const clusterIndex = Math.floor(offsetBytes / this.clusterBytes);
    const inCluster = offsetBytes % this.clusterBytes;
    const lengthBytes = this.clusterBytes - inCluster;
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    if (this.entry(this.l1, l1Index) === 0n) {
      // A whole missing L2 table is one unallocated run.
      const spanBytes = this.l2Entries * this.clusterBytes;
      return {
        kind: 'unallocated',
        lengthBytes: Math.min(spanBytes - (offsetBytes % spanBytes), maxLengthBytes),
      };
    }
    const found = await this.lookup(clusterIndex);
    if (found.kind === 'unallocated') return { kind: 'unallocated', lengthBytes };
    if (found.kind === 'data' && this.aes)
      return decodedRange(lengthBytes, inCluster, () =>
        this.decryptCluster(clusterIndex, found.hostOffsetBytes),
      );
    if (found.kind === 'data')
      return { kind: 'data', lengthBytes, hostOffsetBytes: found.hostOffsetBytes + inCluster };
    return decodedRange(lengthBytes, inCluster, () =>
      this.decompress(found.hostOffsetBytes, found.compressedBytes),
    );
  }

  protected override allocationUnitBytes(): number {
    return this.clusterBytes;
  }

  private async allocateAtEnd(lengthBytes: number): Promise<number> {
    const at = Math.ceil(this.fileEndBytes / this.clusterBytes) * this.clusterBytes;
    this.fileEndBytes = at + lengthBytes;
    await this.file.truncate(this.fileEndBytes);
    return at;
  }

  private async ensureL2(unitIndex: number): Promise<void> {
    const l1Index = Math.floor(unitIndex / this.l2Entries);
    if (this.entry(this.l1, l1Index) === 0n) {
      // The zeroed L2 table exists on disk before the L1 entry points at it.
      const tableBytes = this.l2Entries * 8;
      const l2OffsetBytes = await this.allocateAtEnd(tableBytes);
      this.cacheL2(l2OffsetBytes, new Uint8Array(tableBytes));
      setU64be(viewOf(this.l1), l1Index * 8, l2OffsetBytes);
      await this.file.write(
        this.header.l1TableOffsetBytes + l1Index * 8,
        this.l1.subarray(l1Index * 8, l1Index * 8 + 8),
      );
    }
  }

  protected override async reserveUnit(unitIndex: number): Promise<number> {
    await this.ensureL2(unitIndex);
    return this.allocateAtEnd(this.clusterBytes);
  }

  /** Compressed writes are whole clusters (qemu's qcow_co_pwritev_compressed). */
  get compressedWriteUnitBytes(): number {
    return this.clusterBytes;
  }

  /**
   * Writes one cluster deflate-compressed (raw deflate, 4 KiB window, as qemu) at the unaligned end of
   * the file; clusters that do not shrink, or are already allocated, are written uncompressed.
   */
  writeCompressed(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.exclusive(() => this.writeCompressedUnlocked(offsetBytes, data));
  }

  private async writeCompressedUnlocked(offsetBytes: number, data: Uint8Array): Promise<void> {
    const clusterIndex = Math.floor(offsetBytes / this.clusterBytes);
    const cluster = new Uint8Array(this.clusterBytes);
    cluster.set(data.subarray(0, this.clusterBytes));
    const compressed = deflateRawSync(cluster, { windowBits: 12, memLevel: 9 });
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    const allocated =
      this.entry(this.l1, l1Index) !== 0n && (await this.lookup(clusterIndex)).kind !== 'unallocated';
    if (compressed.length >= this.clusterBytes || allocated || offsetBytes % this.clusterBytes !== 0) {
      await this.writeUnlocked(offsetBytes, data);
      return;
    }
    await this.ensureL2(clusterIndex);
    const hostOffsetBytes = this.fileEndBytes;
    this.fileEndBytes += compressed.length;
    await this.file.write(hostOffsetBytes, compressed);
    const entry =
      QCOW_OFLAG_COMPRESSED |
      (BigInt(compressed.length) << BigInt(63 - this.header.clusterBits)) |
      BigInt(hostOffsetBytes);
    const l2OffsetBytes = Number(this.entry(this.l1, l1Index));
    const table = await this.l2Table(l2OffsetBytes, l1Index);
    const l2Index = clusterIndex % this.l2Entries;
    viewOf(table).setBigUint64(l2Index * 8, entry, false);
    await this.file.write(l2OffsetBytes + l2Index * 8, table.subarray(l2Index * 8, l2Index * 8 + 8));
  }

  protected override async commitUnit(unitIndex: number, hostOffsetBytes: number): Promise<void> {
    const l1Index = Math.floor(unitIndex / this.l2Entries);
    const l2OffsetBytes = Number(this.entry(this.l1, l1Index));
    const table = await this.l2Table(l2OffsetBytes, l1Index);
    const l2Index = unitIndex % this.l2Entries;
    setU64be(viewOf(table), l2Index * 8, hostOffsetBytes);
    await this.file.write(l2OffsetBytes + l2Index * 8, table.subarray(l2Index * 8, l2Index * 8 + 8));
  }

  override async info(): Promise<ImageInfo> {
    const info: ImageInfo = {
      ...(await super.info()),
      clusterSizeBytes: this.clusterBytes,
      dirty: false,
    };
    if (this.aes) info.encrypted = true;
    reportBackingName(info, this.backingName);
    return info;
  }
}

async function openQcow(context: OpenContext): Promise<BlockDevice> {
  const header = parseQcowHeader(
    await readExact(context.file, 0, QCOW_HEADER_BYTES, 'qcow header'),
    context.path,
  );
  const fileSizeBytes = await context.file.sizeBytes();
  const l1Bytes = qcowL1Entries(header) * 8;
  if (header.l1TableOffsetBytes + l1Bytes > fileSizeBytes) {
    throw new ImageFormatError({
      file: context.path,
      offsetBytes: 40,
      message: `L1 table (${l1Bytes} bytes at ${header.l1TableOffsetBytes}) extends past the end of the file`,
    });
  }
  const l1 = await readExact(context.file, header.l1TableOffsetBytes, l1Bytes, 'qcow L1 table');
  let backingName: string | undefined;
  let backing: BlockDevice | undefined;
  if (header.backingFileOffsetBytes !== 0 && header.backingFileSizeBytes > 0) {
    const name = await readExact(
      context.file,
      header.backingFileOffsetBytes,
      header.backingFileSizeBytes,
      'qcow backing file name',
    );
    backingName = cString(name, 0, name.length);
    if (context.openBacking) backing = await context.openBacking(backingName, undefined);
  }
  let aes: { cipher: SectorCipher | undefined } | undefined;
  if (header.cryptMethod === QCOW_CRYPT_AES) {
    // qemu can still write these; vdisk only reads them (convert them to qcow2 with encrypt.format=luks).
    if (!context.readOnly)
      throw new UnsupportedError({
        format: 'qcow',
        feature: 'writing aes encryption',
        message: `${context.path}: AES-encrypted qcow images can only be opened read-only`,
      });
    const secretId = context.options['encrypt.key-secret'];
    if (secretId === undefined && !context.metadataOnly)
      throw new InvalidOptionError({
        option: 'encrypt.key-secret',
        message: `${context.path}: Parameter 'encrypt.key-secret' is required for cipher`,
      });
    aes = {
      cipher:
        secretId === undefined ? undefined : legacyAesCipher(lookupSecret(secretId, 'encrypt.key-secret')),
    };
  }
  return new QcowDevice(context, header, l1, fileSizeBytes, backing, backingName, aes);
}

async function createQcow(context: CreateContext): Promise<void> {
  const backingFile = context.backingFile ?? context.options.backing_file;
  if (context.options.encryption === 'on' || context.options['encrypt.format'] !== undefined) {
    throw new InvalidOptionError({
      option: 'encryption',
      value: 'on',
      message: 'AES-encrypted qcow images are not supported',
    });
  }
  if (context.sizeBytes <= 1)
    throw new InvalidOptionError({
      option: 'size',
      value: context.sizeBytes,
      message: 'Image size is too small (must be at least 2 bytes)',
    });
  const nameBytes = backingFile === undefined ? new Uint8Array(0) : Buffer.from(backingFile, 'utf8');
  if (nameBytes.length > 1023)
    throw new InvalidOptionError({
      option: 'backing_file',
      value: backingFile,
      message: 'Backing file name too long',
    });
  // As qemu: 512-byte clusters over a backing file (no copying of unmodified sectors), else 4 KiB.
  const clusterBits = backingFile === undefined ? 12 : 9;
  const l2Bits = backingFile === undefined ? 9 : 12;
  const headerBytes = Math.ceil((QCOW_HEADER_BYTES + nameBytes.length) / 8) * 8;
  const header: QcowHeader = {
    backingFileOffsetBytes: backingFile === undefined ? 0 : QCOW_HEADER_BYTES,
    backingFileSizeBytes: nameBytes.length,
    mtimeSeconds: 0,
    sizeBytes: context.sizeBytes,
    clusterBits,
    l2Bits,
    cryptMethod: 0,
    l1TableOffsetBytes: headerBytes,
  };
  const l1Bytes = qcowL1Entries(header) * 8;
  await context.file.truncate(0);
  await context.file.write(0, encodeQcowHeader(header));
  if (nameBytes.length > 0) await context.file.write(QCOW_HEADER_BYTES, nameBytes);
  await context.file.truncate(headerBytes + Math.ceil(l1Bytes / 512) * 512);
  await context.file.sync();
}

export const qcowCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Format of the backing image' },
];

export const qcowDriver = {
  name: 'qcow',
  description: 'QEMU copy-on-write, version 1',
  probe: (head: Uint8Array) => (isQcowHead(head) ? 100 : 0),
  capabilities: {
    create: true,
    write: true,
    backing: true,
    internalSnapshots: false,
    check: false,
    compression: ['zlib'],
    encryption: ['aes'],
    resize: 'none',
    concurrentWrites: false,
  },
  createOptions: qcowCreateOptions,
  open: openQcow,
  create: createQcow,
} satisfies FormatDriver;
