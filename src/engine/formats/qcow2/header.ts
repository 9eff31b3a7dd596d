// qcow2 header and header extensions: Buffer <-> typed record, pure, no I/O.
// Implements qcow2.txt "Header" and "Header extensions" (versions 2 and 3, header_length >= 104,
// compression_type at byte 104). Unknown extensions are kept as opaque records so they survive a rewrite.

import { ImageFormatError } from '../../errors.ts';

export const QCOW2_MAGIC = 0x514649fb;
export const QCOW2_V2_HEADER_BYTES = 72;
export const QCOW2_V3_MIN_HEADER_BYTES = 104;
/** What qemu 7.2 writes for a v3 header: 104 bytes + compression_type + 7 bytes of padding. */
export const QCOW2_V3_HEADER_BYTES = 112;
export const QCOW2_MIN_CLUSTER_BITS = 9;
export const QCOW2_MAX_CLUSTER_BITS = 21;
export const QCOW2_MAX_REFCOUNT_ORDER = 6;
/** qemu's QCOW_MAX_L1_SIZE: 32 MiB of L1 table. */
export const QCOW2_MAX_L1_BYTES = 32 * 1024 * 1024;
/** qemu's QCOW_MAX_REFTABLE_SIZE: 8 MiB of refcount table. */
export const QCOW2_MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** qemu's backing file name limit (1023 bytes, the buffer is 1024). */
export const QCOW2_MAX_BACKING_NAME_BYTES = 1023;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

/** Byte offsets of header fields that are rewritten in place. */
export const HEADER_FIELD = {
  backingFileOffset: 8,
  size: 24,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
} as const;

export type FeatureKind = 'incompatible' | 'compatible' | 'autoclear';

export interface FeatureName {
  kind: FeatureKind;
  bit: number;
  name: string;
}

/** The feature-name table qemu 7.2 writes, in its order. */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  { kind: 'incompatible', bit: 0, name: 'dirty bit' },
  { kind: 'incompatible', bit: 1, name: 'corrupt bit' },
  { kind: 'incompatible', bit: 2, name: 'external data file' },
  { kind: 'incompatible', bit: 3, name: 'compression type' },
  { kind: 'incompatible', bit: 4, name: 'extended L2 entries' },
  { kind: 'compatible', bit: 0, name: 'lazy refcounts' },
  { kind: 'autoclear', bit: 0, name: 'bitmaps' },
  { kind: 'autoclear', bit: 1, name: 'raw external data' },
];

export interface HeaderExtension {
  type: number;
  data: Buffer;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffsetBytes: number;
  backingFileSizeBytes: number;
  clusterBits: number;
  virtualSizeBytes: number;
  cryptMethod: number;
  l1EntryCount: number;
  l1TableOffsetBytes: number;
  refcountTableOffsetBytes: number;
  refcountTableClusters: number;
  snapshotCount: number;
  snapshotsOffsetBytes: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** refcount width is 2^refcountOrder bits (v2: always 4, i.e. 16 bits). */
  refcountOrder: number;
  headerLengthBytes: number;
  /** 0 = zlib (deflate), 1 = zstd. */
  compressionType: number;
  /** Every extension in file order, known ones included, end marker excluded. */
  extensions: HeaderExtension[];
  backingFileName?: string;
  backingFormat?: string;
  featureNames: FeatureName[];
}

function formatError(file: string, offsetBytes: number, message: string): ImageFormatError {
  return new ImageFormatError({ file, offsetBytes, message });
}

/** Reads a big-endian u64 that must fit a JS safe integer; throws ImageFormatError otherwise. */
export function readSafeU64(buffer: Buffer, offsetBytes: number, file: string, field: string): number {
  const value = buffer.readBigUInt64BE(offsetBytes);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw formatError(file, offsetBytes, `${field} ${value} is larger than ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(value);
}

/** Probe score 0-100 from the file's first bytes: 100 for the qcow2 magic with version 2 or 3. */
export function probeQcow2(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const view = Buffer.from(head.buffer, head.byteOffset, head.length);
  if (view.readUInt32BE(0) !== QCOW2_MAGIC) return 0;
  const version = view.readUInt32BE(4);
  return version === 2 || version === 3 ? 100 : 0;
}

function parseFeatureTable(data: Buffer): FeatureName[] {
  const names: FeatureName[] = [];
  const kinds: FeatureKind[] = ['incompatible', 'compatible', 'autoclear'];
  for (let at = 0; at + 48 <= data.length; at += 48) {
    const kind = kinds[data[at] ?? 255];
    if (!kind) continue;
    const raw = data.subarray(at + 2, at + 48);
    const end = raw.indexOf(0);
    names.push({ kind, bit: data[at + 1] ?? 0, name: raw.subarray(0, end < 0 ? 46 : end).toString('utf8') });
  }
  return names;
}

/**
 * Parses the header from the first bytes of the file (at least the header cluster, or the whole file when
 * shorter). Throws ImageFormatError (code VDISK_EFORMAT) for a bad magic, version, field out of range or a
 * truncated header / extension area. Does not judge feature bits (the driver does).
 */
export function parseHeader(head: Buffer, file: string): Qcow2Header {
  if (head.length < QCOW2_V2_HEADER_BYTES)
    throw formatError(file, 0, `header truncated: ${head.length} of ${QCOW2_V2_HEADER_BYTES} bytes`);
  if (head.readUInt32BE(0) !== QCOW2_MAGIC) throw formatError(file, 0, 'bad qcow2 magic');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw formatError(file, 4, `unsupported qcow2 version ${version}`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS || clusterBits > QCOW2_MAX_CLUSTER_BITS) {
    throw formatError(
      file,
      20,
      `cluster_bits ${clusterBits} outside ${QCOW2_MIN_CLUSTER_BITS}..${QCOW2_MAX_CLUSTER_BITS}`,
    );
  }
  const clusterSizeBytes = 2 ** clusterBits;
  const header: Qcow2Header = {
    version,
    backingFileOffsetBytes: readSafeU64(head, 8, file, 'backing_file_offset'),
    backingFileSizeBytes: head.readUInt32BE(16),
    clusterBits,
    virtualSizeBytes: readSafeU64(head, 24, file, 'size'),
    cryptMethod: head.readUInt32BE(32),
    l1EntryCount: head.readUInt32BE(36),
    l1TableOffsetBytes: readSafeU64(head, 40, file, 'l1_table_offset'),
    refcountTableOffsetBytes: readSafeU64(head, 48, file, 'refcount_table_offset'),
    refcountTableClusters: head.readUInt32BE(56),
    snapshotCount: head.readUInt32BE(60),
    snapshotsOffsetBytes: readSafeU64(head, 64, file, 'snapshots_offset'),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLengthBytes: QCOW2_V2_HEADER_BYTES,
    compressionType: 0,
    extensions: [],
    featureNames: [],
  };
  if (version === 3) {
    if (head.length < QCOW2_V3_MIN_HEADER_BYTES)
      throw formatError(file, 0, `v3 header truncated: ${head.length} of ${QCOW2_V3_MIN_HEADER_BYTES} bytes`);
    header.incompatibleFeatures = head.readBigUInt64BE(72);
    header.compatibleFeatures = head.readBigUInt64BE(80);
    header.autoclearFeatures = head.readBigUInt64BE(88);
    header.refcountOrder = head.readUInt32BE(96);
    header.headerLengthBytes = head.readUInt32BE(100);
    if (header.refcountOrder > QCOW2_MAX_REFCOUNT_ORDER)
      throw formatError(file, 96, `refcount_order ${header.refcountOrder} above ${QCOW2_MAX_REFCOUNT_ORDER}`);
    if (header.headerLengthBytes < QCOW2_V3_MIN_HEADER_BYTES || header.headerLengthBytes > clusterSizeBytes) {
      throw formatError(
        file,
        100,
        `header_length ${header.headerLengthBytes} outside ${QCOW2_V3_MIN_HEADER_BYTES}..${clusterSizeBytes}`,
      );
    }
    if (header.headerLengthBytes % 8 !== 0)
      throw formatError(file, 100, `header_length ${header.headerLengthBytes} is not a multiple of 8`);
    if (header.headerLengthBytes > head.length)
      throw formatError(
        file,
        0,
        `header truncated: header_length ${header.headerLengthBytes}, file has ${head.length} bytes`,
      );
    if (header.headerLengthBytes > 104) header.compressionType = head[104] ?? 0;
  }
  parseExtensions(head, header, file, clusterSizeBytes);
  if (header.backingFileOffsetBytes !== 0) {
    const start = header.backingFileOffsetBytes;
    const length = header.backingFileSizeBytes;
    if (length > QCOW2_MAX_BACKING_NAME_BYTES || start + length > clusterSizeBytes) {
      throw formatError(
        file,
        8,
        `backing file name (offset ${start}, ${length} bytes) does not fit in the header cluster`,
      );
    }
    if (start + length > head.length)
      throw formatError(file, start, 'backing file name lies past the end of the file');
    header.backingFileName = head.subarray(start, start + length).toString('utf8');
  }
  return header;
}

function parseExtensions(head: Buffer, header: Qcow2Header, file: string, clusterSizeBytes: number): void {
  // Extensions run from the end of the header to the end of the header cluster (or to the backing
  // file name when it sits earlier, as qemu bounds them).
  let end = Math.min(clusterSizeBytes, head.length);
  if (header.backingFileOffsetBytes !== 0 && header.backingFileOffsetBytes < end)
    end = header.backingFileOffsetBytes;
  let at = header.headerLengthBytes;
  while (at + 8 <= end) {
    const type = head.readUInt32BE(at);
    const lengthBytes = head.readUInt32BE(at + 4);
    if (type === EXT_END) return;
    if (lengthBytes > end - at - 8)
      throw formatError(
        file,
        at,
        `header extension 0x${type.toString(16)} of ${lengthBytes} bytes runs past the header cluster`,
      );
    const data = Buffer.from(head.subarray(at + 8, at + 8 + lengthBytes));
    header.extensions.push({ type, data });
    if (type === EXT_BACKING_FORMAT) header.backingFormat = data.toString('utf8').replace(/\0.*$/s, '');
    else if (type === EXT_FEATURE_TABLE) header.featureNames = parseFeatureTable(data);
    at += 8 + Math.ceil(lengthBytes / 8) * 8;
  }
  if (at < end && head.length < clusterSizeBytes && at + 8 > head.length) {
    throw formatError(file, at, 'header extension area truncated');
  }
}

/** Encodes a feature-name table extension payload (48 bytes per entry). */
export function encodeFeatureTable(names: readonly FeatureName[]): Buffer {
  const data = Buffer.alloc(48 * names.length);
  const kindCodes: Record<FeatureKind, number> = { incompatible: 0, compatible: 1, autoclear: 2 };
  names.forEach((entry, index) => {
    data[index * 48] = kindCodes[entry.kind];
    data[index * 48 + 1] = entry.bit;
    data.write(entry.name.slice(0, 46), index * 48 + 2, 'utf8');
  });
  return data;
}

/**
 * Serializes a header into one header cluster: fixed fields, the extensions (in record order, each padded to
 * 8 bytes), the end marker, then the backing file name. Sets backingFileOffsetBytes/SizeBytes in the copy it
 * writes. Throws ImageFormatError when the whole does not fit in the cluster.
 */
export function serializeHeader(header: Qcow2Header, file = '<new image>'): Buffer {
  const clusterSizeBytes = 2 ** header.clusterBits;
  const out = Buffer.alloc(clusterSizeBytes);
  const headerLengthBytes = header.version === 2 ? QCOW2_V2_HEADER_BYTES : header.headerLengthBytes;
  let at = headerLengthBytes;
  for (const extension of header.extensions) {
    const padded = Math.ceil(extension.data.length / 8) * 8;
    if (at + 8 + padded + 8 > clusterSizeBytes)
      throw formatError(file, at, 'header extensions do not fit in the header cluster');
    out.writeUInt32BE(extension.type, at);
    out.writeUInt32BE(extension.data.length, at + 4);
    extension.data.copy(out, at + 8);
    at += 8 + padded;
  }
  // end-of-extensions marker: 8 zero bytes
  at += 8;
  let backingOffset = 0;
  let backingLength = 0;
  if (header.backingFileName !== undefined) {
    const name = Buffer.from(header.backingFileName, 'utf8');
    if (name.length > QCOW2_MAX_BACKING_NAME_BYTES || at + name.length > clusterSizeBytes) {
      throw formatError(
        file,
        at,
        `backing file name of ${name.length} bytes does not fit in the header cluster`,
      );
    }
    backingOffset = at;
    backingLength = name.length;
    name.copy(out, at);
  }
  out.writeUInt32BE(QCOW2_MAGIC, 0);
  out.writeUInt32BE(header.version, 4);
  out.writeBigUInt64BE(BigInt(backingOffset), 8);
  out.writeUInt32BE(backingLength, 16);
  out.writeUInt32BE(header.clusterBits, 20);
  out.writeBigUInt64BE(BigInt(header.virtualSizeBytes), 24);
  out.writeUInt32BE(header.cryptMethod, 32);
  out.writeUInt32BE(header.l1EntryCount, 36);
  out.writeBigUInt64BE(BigInt(header.l1TableOffsetBytes), 40);
  out.writeBigUInt64BE(BigInt(header.refcountTableOffsetBytes), 48);
  out.writeUInt32BE(header.refcountTableClusters, 56);
  out.writeUInt32BE(header.snapshotCount, 60);
  out.writeBigUInt64BE(BigInt(header.snapshotsOffsetBytes), 64);
  if (header.version === 3) {
    out.writeBigUInt64BE(header.incompatibleFeatures, 72);
    out.writeBigUInt64BE(header.compatibleFeatures, 80);
    out.writeBigUInt64BE(header.autoclearFeatures, 88);
    out.writeUInt32BE(header.refcountOrder, 96);
    out.writeUInt32BE(headerLengthBytes, 100);
    if (headerLengthBytes > 104) out[104] = header.compressionType;
  }
  return out;
}

/** Names of the set bits of `bits` not in `known`, using the image's feature table when it names them. */
export function describeUnknownFeatures(
  header: Qcow2Header,
  kind: FeatureKind,
  bits: bigint,
  known: bigint,
): string[] {
  const unknown: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    const mask = 1n << BigInt(bit);
    if ((bits & mask) === 0n || (known & mask) !== 0n) continue;
    const named = header.featureNames.find((entry) => entry.kind === kind && entry.bit === bit);
    unknown.push(named ? `bit ${bit} (${named.name})` : `bit ${bit}`);
  }
  return unknown;
}
