// L1 and L2 entry encoding: guest cluster -> host cluster, including zero and compressed entries.
// Implements qcow2.txt "Cluster mapping" (standard cluster descriptor, compressed cluster descriptor).
// Entries are split into two 32-bit halves so the hot path never allocates a BigInt.

/** L1/L2 bit 63: the cluster's refcount is exactly one (writable in place). */
export const OFLAG_COPIED_HIGH = 0x80000000;
/** L2 bit 62: compressed cluster descriptor. */
export const OFLAG_COMPRESSED_HIGH = 0x40000000;
/** L2 bit 0 (v3): the cluster reads as zeros. */
export const OFLAG_ZERO_LOW = 1;
/** Bits 9..55: host offset of an L2 table / standard data cluster, as 32-bit halves. */
export const OFFSET_HIGH_MASK = 0x00ffffff;
export const OFFSET_LOW_MASK = 0xfffffe00;
/** L1 reserved bits 1..8 and 56..62. */
const L1_RESERVED_HIGH = 0x7f000000;
const L1_RESERVED_LOW = 0x000001fe;
/** Standard L2 reserved bits 1..8 and 56..61. */
const L2_RESERVED_HIGH = 0x3f000000;
const L2_RESERVED_LOW = 0x000001fe;

export type L2Kind = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

export interface L2Mapping {
  kind: L2Kind;
  /** Host offset of the data cluster (normal, zero-alloc) or of the compressed bytes (compressed). */
  hostOffsetBytes: number;
  /** Refcount is one: the cluster may be written in place. */
  copied: boolean;
  /** Compressed: bytes from hostOffsetBytes to the end of the last sector holding compressed data. */
  compressedSizeBytes: number;
  /** Reserved bits were set (check reports it; reads still follow qemu's interpretation). */
  hasReservedBits: boolean;
  /** Extended L2 entries only: bit i set = subcluster i is allocated at hostOffsetBytes + i * subcluster size. */
  subclusterAllocated?: number;
  /** Extended L2 entries only: bit i set = subcluster i reads as zeros. */
  subclusterZero?: number;
}

/** Subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS_PER_CLUSTER = 32;
/** A subcluster bitmap with every bit set. */
export const ALL_SUBCLUSTERS = 0xffffffff;

/** Writes a 16-byte extended L2 entry: the standard part (no zero flag) and both subcluster bitmaps. */
export function writeExtendedEntry(
  table: Buffer,
  index: number,
  hostOffsetBytes: number,
  copied: boolean,
  allocatedMask: number,
  zeroMask: number,
): void {
  writeEntry(table, index * 2, hostOffsetBytes, copied);
  table.writeUInt32BE(zeroMask >>> 0, index * 16 + 8);
  table.writeUInt32BE(allocatedMask >>> 0, index * 16 + 12);
}

function offsetOf(high: number, low: number): number {
  return (high & OFFSET_HIGH_MASK) * 2 ** 32 + ((low & OFFSET_LOW_MASK) >>> 0);
}

/** Host offset of the L2 table named by an L1 entry, 0 when unallocated. */
export function l1Offset(l1: Buffer, index: number): number {
  return offsetOf(l1.readUInt32BE(index * 8), l1.readUInt32BE(index * 8 + 4));
}

export function l1Copied(l1: Buffer, index: number): boolean {
  return (l1.readUInt32BE(index * 8) & OFLAG_COPIED_HIGH) !== 0;
}

export function l1HasReservedBits(l1: Buffer, index: number): boolean {
  return (
    (l1.readUInt32BE(index * 8) & L1_RESERVED_HIGH) !== 0 ||
    (l1.readUInt32BE(index * 8 + 4) & L1_RESERVED_LOW) !== 0
  );
}

/** Writes a standard entry: offset (cluster aligned) with the COPIED flag, optionally the zero flag. */
export function writeEntry(
  table: Buffer,
  index: number,
  hostOffsetBytes: number,
  copied: boolean,
  zero = false,
): void {
  const high = Math.floor(hostOffsetBytes / 2 ** 32);
  const low = hostOffsetBytes % 2 ** 32;
  table.writeUInt32BE(((copied ? OFLAG_COPIED_HIGH : 0) | high) >>> 0, index * 8);
  table.writeUInt32BE(((low & OFFSET_LOW_MASK) | (zero ? OFLAG_ZERO_LOW : 0)) >>> 0, index * 8 + 4);
}

export function clearEntry(table: Buffer, index: number): void {
  table.writeUInt32BE(0, index * 8);
  table.writeUInt32BE(0, index * 8 + 4);
}

/** Bit position where the compressed descriptor's sector count starts (x in qcow2.txt: 62 - (cluster_bits - 8)). */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/**
 * Decodes L2 entry `index` of `table` as qemu's qcow2_get_cluster_type does. With `extendedL2` entries are
 * 16 bytes and carry the subcluster bitmaps (qcow2.txt "Extended L2 Entries"); a standard cluster is then
 * 'normal' (host cluster present) or 'unallocated', and the bitmaps say which subclusters hold data or zeros.
 */
export function decodeL2(table: Buffer, index: number, clusterBits: number, extendedL2 = false): L2Mapping {
  const base = index * (extendedL2 ? 16 : 8);
  const high = table.readUInt32BE(base);
  const low = table.readUInt32BE(base + 4);
  if (high & OFLAG_COMPRESSED_HIGH) {
    const entry = (BigInt(high) << 32n) | BigInt(low);
    const offsetBits = BigInt(compressedOffsetBits(clusterBits));
    const hostOffsetBytes = Number(entry & ((1n << offsetBits) - 1n));
    const extraSectors = Number((entry >> offsetBits) & ((1n << BigInt(clusterBits - 8)) - 1n));
    // (extraSectors + 1) sectors, counted from the sector holding the first byte.
    const compressedSizeBytes = (extraSectors + 1) * 512 - (hostOffsetBytes % 512);
    return {
      kind: 'compressed',
      hostOffsetBytes,
      copied: false,
      compressedSizeBytes,
      hasReservedBits: (high & OFLAG_COPIED_HIGH) !== 0,
    };
  }
  const hostOffsetBytes = offsetOf(high, low);
  const copied = (high & OFLAG_COPIED_HIGH) !== 0;
  const hasReservedBits = (high & L2_RESERVED_HIGH) !== 0 || (low & L2_RESERVED_LOW) !== 0;
  if (extendedL2) {
    const subclusterZero = table.readUInt32BE(base + 8);
    const subclusterAllocated = table.readUInt32BE(base + 12);
    return {
      kind: hostOffsetBytes ? 'normal' : 'unallocated',
      hostOffsetBytes,
      copied,
      compressedSizeBytes: 0,
      hasReservedBits: hasReservedBits || (low & OFLAG_ZERO_LOW) !== 0,
      subclusterAllocated,
      subclusterZero,
    };
  }
  let kind: L2Kind;
  if (low & OFLAG_ZERO_LOW) kind = hostOffsetBytes ? 'zero-alloc' : 'zero-plain';
  else kind = hostOffsetBytes ? 'normal' : 'unallocated';
  return { kind, hostOffsetBytes, copied, compressedSizeBytes: 0, hasReservedBits };
}

/** classifyStandardEntry: the entry reads as zeros (zero flag, with or without a host cluster). */
export const ENTRY_READS_ZERO = -1;
/** classifyStandardEntry: the entry is unallocated (the backing file, or zeros without one). */
export const ENTRY_UNALLOCATED = -2;
/** classifyStandardEntry: anything else (compressed, or an offset decodeChecked refuses): decode it. */
export const ENTRY_OTHER = -3;

/**
 * What standard (8-byte) L2 entry `index` of `table` maps, from its two words without building an
 * L2Mapping: a data cluster's host offset (> 0), ENTRY_READS_ZERO, ENTRY_UNALLOCATED, or ENTRY_OTHER.
 * For scans over thousands of entries; only valid for images without extended L2 or a data file.
 */
export function classifyStandardEntry(table: Buffer, index: number, clusterSizeBytes: number): number {
  const high = table.readUInt32BE(index * 8);
  if ((high & OFLAG_COMPRESSED_HIGH) !== 0) return ENTRY_OTHER;
  const hostOffsetBytes = offsetOf(high, table.readUInt32BE(index * 8 + 4));
  if (
    hostOffsetBytes % clusterSizeBytes !== 0 ||
    hostOffsetBytes > Number.MAX_SAFE_INTEGER - 4 * clusterSizeBytes
  )
    return ENTRY_OTHER;
  if ((table.readUInt32BE(index * 8 + 4) & OFLAG_ZERO_LOW) !== 0) return ENTRY_READS_ZERO;
  return hostOffsetBytes === 0 ? ENTRY_UNALLOCATED : hostOffsetBytes;
}

/** Encodes a compressed descriptor for `lengthBytes` of compressed data at `hostOffsetBytes`. */
export function writeCompressedEntry(
  table: Buffer,
  index: number,
  clusterBits: number,
  hostOffsetBytes: number,
  lengthBytes: number,
): void {
  const extraSectors =
    Math.floor((hostOffsetBytes + lengthBytes - 1) / 512) - Math.floor(hostOffsetBytes / 512);
  const offsetBits = BigInt(compressedOffsetBits(clusterBits));
  const entry = (1n << 62n) | (BigInt(extraSectors) << offsetBits) | BigInt(hostOffsetBytes);
  table.writeBigUInt64BE(entry, index * 8);
}

/** The host clusters a compressed cluster's bytes touch, as first index and count. */
export function compressedClusterSpan(
  mapping: L2Mapping,
  clusterBits: number,
): { firstCluster: number; clusterCount: number } {
  const clusterSizeBytes = 2 ** clusterBits;
  const firstCluster = Math.floor(mapping.hostOffsetBytes / clusterSizeBytes);
  const lastCluster = Math.floor(
    (mapping.hostOffsetBytes + mapping.compressedSizeBytes - 1) / clusterSizeBytes,
  );
  return { firstCluster, clusterCount: lastCluster - firstCluster + 1 };
}

/** One run inside a cluster with extended L2 entries whose subclusters share a state. */
export interface SubclusterRun {
  inClusterBytes: number;
  lengthBytes: number;
  /** A standard mapping for the run ('normal' keeps the cluster's host offset as its base). */
  mapping: L2Mapping;
}

/**
 * Splits [inClusterBytes, inClusterBytes + lengthBytes) of an extended-L2 cluster into runs of subclusters
 * with the same state: allocated (data in the host cluster), zero, or unallocated (backing / zeros).
 */
export function splitSubclusters(
  mapping: L2Mapping,
  clusterBits: number,
  inClusterBytes: number,
  lengthBytes: number,
): SubclusterRun[] {
  const subclusterBytes = 2 ** clusterBits / SUBCLUSTERS_PER_CLUSTER;
  const runs: SubclusterRun[] = [];
  const end = inClusterBytes + lengthBytes;
  let position = inClusterBytes;
  while (position < end) {
    const subcluster = Math.floor(position / subclusterBytes);
    const runEnd = Math.min(end, (subcluster + 1) * subclusterBytes);
    const allocated =
      ((mapping.subclusterAllocated ?? 0) >>> subcluster) & 1 && mapping.hostOffsetBytes !== 0;
    const zero = ((mapping.subclusterZero ?? 0) >>> subcluster) & 1;
    // Zero subclusters of a cluster that has a host cluster report it, as qemu-img map does.
    const kind: L2Kind = allocated
      ? 'normal'
      : zero
        ? mapping.hostOffsetBytes
          ? 'zero-alloc'
          : 'zero-plain'
        : 'unallocated';
    const previous = runs[runs.length - 1];
    if (previous && previous.mapping.kind === kind) previous.lengthBytes += runEnd - position;
    else {
      runs.push({
        inClusterBytes: position,
        lengthBytes: runEnd - position,
        mapping: {
          kind,
          // The host cluster stays attached to every run: qemu-img map shows it even for unallocated subclusters.
          hostOffsetBytes: mapping.hostOffsetBytes,
          copied: mapping.copied,
          compressedSizeBytes: 0,
          hasReservedBits: false,
        },
      });
    }
    position = runEnd;
  }
  return runs;
}
