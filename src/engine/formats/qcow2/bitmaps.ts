// Persistent dirty bitmaps (qcow2.txt "Bitmaps extension", "Bitmap directory", "Bitmap table"), kept
// valid as qemu keeps them: enabled bitmaps ('auto') get a bit set for every guest range vdisk writes,
// zeroes or discards. Before the first such change each one is marked 'in-use' on disk (synced), so a
// crash leaves it inconsistent, never silently wrong; close writes the bits and clears 'in-use'.
// Disabled and already-inconsistent bitmaps are kept untouched. Limits are qemu's (qcow2-bitmap.c).

import { CorruptImageError, ImageFormatError } from '../../errors.ts';
import { l1Offset } from './cluster-map.ts';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS } from './header.ts';
import type { Qcow2Image } from './image.ts';

/** qemu's QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE and the BME_* entry limits. */
const MAX_BITMAPS = 65535;
const MAX_DIRECTORY_BYTES = 64 * 1024 * 1024;
const MAX_TABLE_ENTRIES = 0x8000000;
const MAX_PHYS_BYTES = 0x20000000;
const MIN_GRANULARITY_BITS = 9;
const MAX_GRANULARITY_BITS = 31;
const MAX_NAME_BYTES = 1023;
const DIRECTORY_ENTRY_BYTES = 24;
const TYPE_DIRTY_TRACKING = 1;

export const BITMAP_FLAG_IN_USE = 1;
export const BITMAP_FLAG_AUTO = 2;
const BITMAP_FLAG_EXTRA_DATA_COMPATIBLE = 4;
const BITMAP_RESERVED_FLAGS = ~(BITMAP_FLAG_IN_USE | BITMAP_FLAG_AUTO | BITMAP_FLAG_EXTRA_DATA_COMPATIBLE);
/** Bitmap table entry: offset bits 9..55, bit 0 "all ones" when the offset is 0; the rest reserved. */
const TABLE_ENTRY_ALL_ONES = 1n;

export interface BitmapEntry {
  name: string;
  granularityBits: number;
  /** Flags as read at open (the 'in-use' vdisk sets while writing is not reflected here). */
  flags: number;
  tableOffsetBytes: number;
  tableEntryCount: number;
  /** Where this entry sits in the file (its flags are rewritten in place). */
  entryOffsetBytes: number;
  /** Updated by vdisk's writes: enabled and consistent at open. */
  tracked: boolean;
}

/** Bytes of bitmap data a bitmap of 2^granularityBits covering `sizeBytes` needs (qemu's get_bitmap_bytes_needed). */
function bitmapBytesNeeded(sizeBytes: number, granularityBits: number): number {
  return Math.ceil(Math.ceil(sizeBytes / 2 ** granularityBits) / 8);
}

/** The qemu-img info flag names, in qemu's order. */
export function bitmapFlagNames(flags: number): string[] {
  const names: string[] = [];
  if (flags & BITMAP_FLAG_IN_USE) names.push('in-use');
  if (flags & BITMAP_FLAG_AUTO) names.push('auto');
  return names;
}

interface TrackedState {
  entry: BitmapEntry;
  table: Buffer | undefined;
  /** Bitmap data clusters changed since open, by table index. */
  changed: Map<number, Buffer>;
  /** Everything is dirty (snapshot revert, commit's emptying): every table entry becomes "all ones". */
  allDirty: boolean;
}

export class PersistentBitmaps {
  readonly entries: readonly BitmapEntry[];
  private readonly image: Qcow2Image;
  private readonly tracked: TrackedState[];
  private markedInUse = false;

  private constructor(image: Qcow2Image, entries: BitmapEntry[]) {
    this.image = image;
    this.entries = entries;
    this.tracked = image.readOnly
      ? []
      : entries
          .filter((entry) => entry.tracked)
          .map((entry) => ({ entry, table: undefined, changed: new Map(), allDirty: false }));
  }

  /**
   * Reads and validates the bitmap directory when the image has one and its autoclear bit says it is
   * valid; undefined otherwise. Throws ImageFormatError / CorruptImageError (with the offset) for a
   * directory qemu would refuse.
   */
  static async load(image: Qcow2Image, fileSizeBytes: number): Promise<PersistentBitmaps | undefined> {
    const header = image.header;
    if (header.version !== 3 || (header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return undefined;
    const extension = header.extensions.find((candidate) => candidate.type === EXT_BITMAPS);
    if (!extension) return undefined;
    const path = image.path;
    const bad = (message: string, offsetBytes?: number, lengthBytes?: number): CorruptImageError =>
      new CorruptImageError({ file: path, offsetBytes, lengthBytes, message, fatal: false });
    if (extension.data.length < 24)
      throw new ImageFormatError({
        file: path,
        message: `bitmaps extension of ${extension.data.length} bytes, expected 24`,
      });
    const bitmapCount = extension.data.readUInt32BE(0);
    const directoryBytesBig = extension.data.readBigUInt64BE(8);
    const directoryOffsetBig = extension.data.readBigUInt64BE(16);
    if (bitmapCount === 0 || bitmapCount > MAX_BITMAPS)
      throw new ImageFormatError({
        file: path,
        message: `bitmaps extension names ${bitmapCount} bitmaps, expected 1..${MAX_BITMAPS}`,
      });
    if (directoryBytesBig > BigInt(MAX_DIRECTORY_BYTES) || directoryBytesBig < BigInt(DIRECTORY_ENTRY_BYTES))
      throw new ImageFormatError({
        file: path,
        message: `bitmap directory of ${directoryBytesBig} bytes, expected ${DIRECTORY_ENTRY_BYTES}..${MAX_DIRECTORY_BYTES}`,
      });
    const directoryBytes = Number(directoryBytesBig);
    if (
      directoryOffsetBig % BigInt(image.clusterSizeBytes) !== 0n ||
      directoryOffsetBig === 0n ||
      directoryOffsetBig + directoryBytesBig > BigInt(fileSizeBytes)
    )
      throw bad(
        `bitmap directory (offset ${directoryOffsetBig}, ${directoryBytes} bytes) is not cluster aligned or lies outside the file (${fileSizeBytes} bytes)`,
        Number(directoryOffsetBig > BigInt(Number.MAX_SAFE_INTEGER) ? 0n : directoryOffsetBig),
        directoryBytes,
      );
    const directoryOffsetBytes = Number(directoryOffsetBig);
    const directory = Buffer.alloc(directoryBytes);
    await image.file.read(directoryOffsetBytes, directory);
    const entries: BitmapEntry[] = [];
    let at = 0;
    for (let index = 0; index < bitmapCount; index++) {
      const entryOffsetBytes = directoryOffsetBytes + at;
      if (at + DIRECTORY_ENTRY_BYTES > directory.length)
        throw bad(`bitmap directory entry ${index} runs past the directory`, entryOffsetBytes);
      const tableOffsetBig = directory.readBigUInt64BE(at);
      const tableEntryCount = directory.readUInt32BE(at + 8);
      const flags = directory.readUInt32BE(at + 12);
      const type = directory[at + 16] ?? 0;
      const granularityBits = directory[at + 17] ?? 0;
      const nameBytes = directory.readUInt16BE(at + 18);
      const extraBytes = directory.readUInt32BE(at + 20);
      const entryBytes = Math.ceil((DIRECTORY_ENTRY_BYTES + extraBytes + nameBytes) / 8) * 8;
      if (at + entryBytes > directory.length)
        throw bad(`bitmap directory entry ${index} runs past the directory`, entryOffsetBytes);
      const problems: string[] = [];
      if (type !== TYPE_DIRTY_TRACKING) problems.push(`type ${type}`);
      if (granularityBits < MIN_GRANULARITY_BITS || granularityBits > MAX_GRANULARITY_BITS)
        problems.push(`granularity_bits ${granularityBits}`);
      if (flags & BITMAP_RESERVED_FLAGS) problems.push(`reserved flags 0x${flags.toString(16)}`);
      if (nameBytes === 0 || nameBytes > MAX_NAME_BYTES) problems.push(`name of ${nameBytes} bytes`);
      if (extraBytes > 0 && !(flags & BITMAP_FLAG_EXTRA_DATA_COMPATIBLE))
        problems.push(`${extraBytes} bytes of extra data`);
      if (tableEntryCount === 0 || tableEntryCount > MAX_TABLE_ENTRIES)
        problems.push(`bitmap table of ${tableEntryCount} entries`);
      if (
        tableOffsetBig === 0n ||
        tableOffsetBig % BigInt(image.clusterSizeBytes) !== 0n ||
        tableOffsetBig + BigInt(tableEntryCount) * 8n > BigInt(fileSizeBytes)
      )
        problems.push(`bitmap table offset ${tableOffsetBig} (not cluster aligned or outside the file)`);
      // qemu's check_dir_entry: the table may not be larger than the virtual size needs, nor (for a
      // consistent bitmap) smaller.
      const neededBytes = bitmapBytesNeeded(header.virtualSizeBytes, granularityBits);
      const physBytes = tableEntryCount * image.clusterSizeBytes;
      const neededClusters = Math.ceil(neededBytes / image.clusterSizeBytes);
      if (physBytes > MAX_PHYS_BYTES || tableEntryCount > neededClusters)
        problems.push(`bitmap table of ${tableEntryCount} entries for ${neededClusters} needed`);
      else if (!(flags & BITMAP_FLAG_IN_USE) && tableEntryCount < neededClusters)
        problems.push(`bitmap table of ${tableEntryCount} entries, too small for ${neededClusters}`);
      if (problems.length > 0)
        throw bad(
          `bitmap directory entry ${index} is invalid: ${problems.join(', ')}`,
          entryOffsetBytes,
          entryBytes,
        );
      const nameStart = at + DIRECTORY_ENTRY_BYTES + extraBytes;
      entries.push({
        name: directory.subarray(nameStart, nameStart + nameBytes).toString('utf8'),
        granularityBits,
        flags,
        tableOffsetBytes: Number(tableOffsetBig),
        tableEntryCount,
        entryOffsetBytes,
        tracked: (flags & BITMAP_FLAG_AUTO) !== 0 && (flags & BITMAP_FLAG_IN_USE) === 0,
      });
      at += entryBytes;
    }
    return new PersistentBitmaps(image, entries);
  }

  /** The directory and tables occupy clusters; a bitmap image refuses resize (as qemu-img does for in-use ones). */
  get count(): number {
    return this.entries.length;
  }

  /** Sets the dirty bits covering [offsetBytes, +lengthBytes) in every tracked bitmap; the first call marks them in use. */
  async markDirty(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.tracked.length === 0 || lengthBytes <= 0) return;
    await this.markInUse();
    for (const state of this.tracked) {
      if (state.allDirty) continue;
      const granularityBits = state.entry.granularityBits;
      const firstBit = Math.floor(offsetBytes / 2 ** granularityBits);
      const endBit = Math.floor((offsetBytes + lengthBytes - 1) / 2 ** granularityBits) + 1;
      const bitsPerCluster = this.image.clusterSizeBytes * 8;
      for (let bit = firstBit; bit < endBit; ) {
        const tableIndex = Math.floor(bit / bitsPerCluster);
        const clusterEnd = Math.min(endBit, (tableIndex + 1) * bitsPerCluster);
        if (tableIndex >= state.entry.tableEntryCount) break;
        const data = await this.changedCluster(state, tableIndex);
        if (data) setBits(data, bit - tableIndex * bitsPerCluster, clusterEnd - tableIndex * bitsPerCluster);
        bit = clusterEnd;
      }
    }
  }

  /** Every tracked bitmap becomes all ones (the whole guest changed at once). */
  async markAllDirty(): Promise<void> {
    if (this.tracked.length === 0) return;
    await this.markInUse();
    for (const state of this.tracked) {
      state.allDirty = true;
      state.changed.clear();
    }
  }

  private async markInUse(): Promise<void> {
    if (this.markedInUse) return;
    // The flags reach the disk before any guest write they would have to describe.
    for (const state of this.tracked)
      await this.writeFlags(state.entry, state.entry.flags | BITMAP_FLAG_IN_USE);
    await this.image.file.sync();
    this.markedInUse = true;
  }

  private async writeFlags(entry: BitmapEntry, flags: number): Promise<void> {
    const field = Buffer.alloc(4);
    field.writeUInt32BE(flags >>> 0);
    await this.image.file.write(entry.entryOffsetBytes + 12, field);
  }

  private async loadTable(state: TrackedState): Promise<Buffer> {
    if (state.table) return state.table;
    const { entry } = state;
    const table = Buffer.alloc(entry.tableEntryCount * 8);
    await this.image.file.read(entry.tableOffsetBytes, table);
    const fileSizeBytes = await this.image.file.sizeBytes();
    for (let index = 0; index < entry.tableEntryCount; index++) {
      const raw = table.readBigUInt64BE(index * 8);
      const offsetBytes = l1Offset(table, index);
      const reserved = raw & ~0x00fffffffffffe01n;
      if (
        reserved !== 0n ||
        (offsetBytes !== 0 && (raw & 1n) !== 0n) ||
        offsetBytes % this.image.clusterSizeBytes !== 0 ||
        offsetBytes + this.image.clusterSizeBytes > fileSizeBytes
      )
        throw new CorruptImageError({
          file: this.image.path,
          offsetBytes: entry.tableOffsetBytes + index * 8,
          lengthBytes: 8,
          message: `bitmap '${entry.name}' table entry ${index} (0x${raw.toString(16)}) is invalid`,
          fatal: false,
        });
    }
    state.table = table;
    return table;
  }

  /** The in-memory copy of bitmap data cluster `tableIndex`; undefined when it is all ones already. */
  private async changedCluster(state: TrackedState, tableIndex: number): Promise<Buffer | undefined> {
    const existing = state.changed.get(tableIndex);
    if (existing) return existing;
    const table = await this.loadTable(state);
    const offsetBytes = l1Offset(table, tableIndex);
    const data = Buffer.alloc(this.image.clusterSizeBytes);
    if (offsetBytes !== 0) await this.image.file.read(offsetBytes, data);
    else if (table.readBigUInt64BE(tableIndex * 8) & TABLE_ENTRY_ALL_ONES) return undefined;
    state.changed.set(tableIndex, data);
    return data;
  }

  /**
   * Writes the changed bits and clears 'in-use'. Order: new data clusters and their refcounts, sync;
   * tables, sync; freed clusters, sync; flags, sync. A crash before the flags leaves the bitmaps in use
   * (inconsistent) with at most leaked clusters.
   */
  async store(): Promise<void> {
    if (!this.markedInUse) return;
    const { image } = this;
    const frees: number[] = [];
    for (const state of this.tracked) {
      const table = await this.loadTable(state);
      if (state.allDirty) {
        for (let index = 0; index < state.entry.tableEntryCount; index++) {
          const offsetBytes = l1Offset(table, index);
          if (offsetBytes !== 0) frees.push(offsetBytes / image.clusterSizeBytes);
          table.writeBigUInt64BE(TABLE_ENTRY_ALL_ONES, index * 8);
        }
        continue;
      }
      for (const [index, data] of state.changed) {
        let offsetBytes = l1Offset(table, index);
        if (offsetBytes === 0) {
          offsetBytes = (await image.refcounts.allocateClusters(1)) * image.clusterSizeBytes;
          table.writeBigUInt64BE(BigInt(offsetBytes), index * 8);
        }
        await image.file.write(offsetBytes, data);
      }
    }
    await image.refcounts.flush();
    await image.file.sync();
    for (const state of this.tracked) {
      if (state.table && (state.allDirty || state.changed.size > 0))
        await image.file.write(state.entry.tableOffsetBytes, state.table);
    }
    await image.file.sync();
    if (frees.length > 0) {
      for (const clusterIndex of frees) await image.refcounts.free(clusterIndex, 1);
      await image.refcounts.flush();
      await image.file.sync();
    }
    for (const state of this.tracked) await this.writeFlags(state.entry, state.entry.flags);
    await image.file.sync();
    for (const state of this.tracked) state.changed.clear();
    this.markedInUse = false;
  }
}

/** Sets bits [fromBit, toBit) of `data`, least significant bit first in each byte (qcow2.txt "Bitmap data"). */
function setBits(data: Buffer, fromBit: number, toBit: number): void {
  let bit = fromBit;
  while (bit < toBit && bit % 8 !== 0) {
    data[bit >>> 3] = (data[bit >>> 3] ?? 0) | (1 << (bit & 7));
    bit++;
  }
  const wholeEnd = toBit - (toBit % 8);
  if (wholeEnd > bit) {
    data.fill(0xff, bit >>> 3, wholeEnd >>> 3);
    bit = wholeEnd;
  }
  while (bit < toBit) {
    data[bit >>> 3] = (data[bit >>> 3] ?? 0) | (1 << (bit & 7));
    bit++;
  }
}
