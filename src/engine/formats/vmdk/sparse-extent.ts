// One hosted sparse extent: grain directory (GD) -> grain tables (GT) -> grains, with the redundant
// GD kept in step, zeroed-grain entries, and stream-optimized compressed grains behind 12-byte markers.
// Spec: VMware "Virtual Disk Format 1.1", "Grain Directories and Grain Tables", "Stream-Optimized
// Compressed Sparse Extents"; lookups and limits as qemu 7.2's get_cluster_offset/vmdk_read_extent.

import { deflateSync, inflateSync } from '../../lazy-zlib.ts';
import { deflateAsync } from '../common/zlib-async.ts';
import { CorruptImageError, ImageFormatError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { checkTableSize, readExact, viewOf } from '../common/binary.ts';
import {
  COMPRESSION_DEFLATE,
  FLAG_COMPRESS,
  FLAG_MARKER,
  FLAG_RGD,
  FLAG_ZERO_GRAIN,
  GD_AT_END,
  l1EntryCount,
  parseSparseHeader,
  SECTOR_BYTES,
  SPARSE_HEADER_BYTES,
  type SparseHeader,
  validateSparseHeader,
} from './sparse-header.ts';

const MARKER_EOS = 0;
const MARKER_FOOTER = 3;
const GTE_ZEROED = 1;
/** Grain tables kept in memory per extent (2 KiB each with qemu's 512 entries). */
const MAX_CACHED_GTS = 4096;
/** Largest grain vdisk decompresses (stream-optimized grains are 64 KiB in practice). */
const MAX_COMPRESSED_GRAIN_BYTES = 16 * 1024 * 1024;
const GRAIN_MARKER_BYTES = 12;
/** Read-ahead for compressed grains read in file order; bounded, one window per extent. */
const READ_AHEAD_BYTES = 1024 * 1024;
/** Bytes of metadata (a grain table and its marker) that may sit between two grains read in order. */
const SEQUENTIAL_GAP_BYTES = 64 * 1024;
/** zlib's Z_SYNC_FLUSH: inflate what a grain holds even when its stream lacks the final block. */
const Z_SYNC_FLUSH = 2;
/** node:zlib's smallest chunkSize. */
const MIN_ZLIB_CHUNK_BYTES = 64;

/** One compressed grain a multi-grain read wants: where it sits, and which of its bytes go where. */
export interface CompressedGrainRead {
  grainHostOffsetBytes: number;
  offsetInGrainBytes: number;
  target: Uint8Array;
}

/** What one lookup found; `lengthBytes` runs to the grain's end at most. */
export type GrainMapping =
  | { kind: 'unallocated'; lengthBytes: number }
  | { kind: 'zero'; lengthBytes: number }
  | { kind: 'data'; lengthBytes: number; hostOffsetBytes: number }
  | { kind: 'compressed'; lengthBytes: number; grainHostOffsetBytes: number; offsetInGrainBytes: number };

export class SparseExtent {
  readonly file: HostFile;
  readonly header: SparseHeader;
  readonly grainBytes: number;
  sizeBytes: number;
  readonly isCompressed: boolean;
  readonly hasZeroGrain: boolean;
  private gd: Uint32Array;
  private readonly gdOffsetBytes: number;
  private rgd: Uint32Array | undefined;
  private readonly rgdOffsetBytes: number;
  private readonly gtCache = new Map<number, Uint32Array>();
  private readonly gtBytes: number;
  private fileEndBytes: number;
  private lastGrain: { hostOffsetBytes: number; bytes: Buffer } | undefined;
  /** Compressed bytes read ahead for grains read in file order (see compressedBytes). */
  private readAhead: { offsetBytes: number; bytes: Buffer } | undefined;
  /** End of the last compressed grain read: the next grain starting just after it is a sequential read. */
  private lastGrainEndBytes = -1;

  private constructor(args: {
    file: HostFile;
    header: SparseHeader;
    gd: Uint32Array;
    gdOffsetBytes: number;
    rgd: Uint32Array | undefined;
    rgdOffsetBytes: number;
    fileSizeBytes: number;
  }) {
    this.file = args.file;
    this.header = args.header;
    this.grainBytes = args.header.grainSectors * SECTOR_BYTES;
    this.sizeBytes = args.header.capacitySectors * SECTOR_BYTES;
    this.isCompressed =
      (args.header.flags & FLAG_COMPRESS) !== 0 && args.header.compressAlgorithm === COMPRESSION_DEFLATE;
    this.hasZeroGrain = (args.header.flags & FLAG_ZERO_GRAIN) !== 0;
    this.gd = args.gd;
    this.gdOffsetBytes = args.gdOffsetBytes;
    this.rgd = args.rgd;
    this.rgdOffsetBytes = args.rgdOffsetBytes;
    this.gtBytes = args.header.gtesPerGt * 4;
    this.fileEndBytes = args.fileSizeBytes;
  }

  /** Opens the extent in `file`: header (footer copy for stream-optimized), GD and redundant GD. */
  static async open(file: HostFile, readOnly: boolean): Promise<SparseExtent> {
    const fileSizeBytes = await file.sizeBytes();
    let header = parseSparseHeader(
      await readExact(file, 0, SPARSE_HEADER_BYTES, 'VMDK sparse header'),
      file.path,
    );
    if (header.gdOffsetSectors === GD_AT_END) header = await readFooterHeader(file, fileSizeBytes);
    validateSparseHeader(header, file.path, readOnly);
    if (header.overheadSectors * SECTOR_BYTES > fileSizeBytes) {
      throw new ImageFormatError({
        file: file.path,
        offsetBytes: 64,
        message: `File truncated, expecting at least ${header.overheadSectors * SECTOR_BYTES} bytes`,
      });
    }
    const entryCount = l1EntryCount(header);
    const readGd = async (offsetSectors: number, what: string): Promise<Uint32Array> => {
      const offsetBytes = offsetSectors * SECTOR_BYTES;
      checkTableSize({
        file: file.path,
        what,
        offsetBytes,
        lengthBytes: entryCount * 4,
        maxBytes: 128 * 1024 * 1024,
        fileSizeBytes,
      });
      const raw = await readExact(file, offsetBytes, entryCount * 4, what);
      const table = new Uint32Array(entryCount);
      for (let i = 0; i < entryCount; i++) table[i] = raw.readUInt32LE(i * 4);
      return table;
    };
    const gd = await readGd(header.gdOffsetSectors, 'grain directory');
    const hasRgd = (header.flags & FLAG_RGD) !== 0 && header.redundantGdOffsetSectors !== 0;
    const rgd =
      hasRgd && !readOnly
        ? await readGd(header.redundantGdOffsetSectors, 'redundant grain directory')
        : undefined;
    return new SparseExtent({
      file,
      header,
      gd,
      gdOffsetBytes: header.gdOffsetSectors * SECTOR_BYTES,
      rgd,
      rgdOffsetBytes: header.redundantGdOffsetSectors * SECTOR_BYTES,
      fileSizeBytes,
    });
  }

  private async grainTable(gdIndex: number, entry: number): Promise<Uint32Array> {
    const key = gdIndex;
    const cached = this.gtCache.get(key);
    if (cached) return cached;
    const offsetBytes = entry * SECTOR_BYTES;
    if (offsetBytes + this.gtBytes > this.fileEndBytes) {
      throw new CorruptImageError({
        file: this.file.path,
        offsetBytes: this.gdOffsetBytes + gdIndex * 4,
        lengthBytes: 4,
        message: `grain directory entry ${gdIndex} points at a grain table past the end of the file (${offsetBytes})`,
      });
    }
    const raw = await readExact(this.file, offsetBytes, this.gtBytes, 'grain table');
    const table = new Uint32Array(this.header.gtesPerGt);
    for (let i = 0; i < table.length; i++) table[i] = raw.readUInt32LE(i * 4);
    if (this.gtCache.size >= MAX_CACHED_GTS) {
      const oldest = this.gtCache.keys().next().value;
      if (oldest !== undefined) this.gtCache.delete(oldest);
    }
    this.gtCache.set(key, table);
    return table;
  }

  /** Maps `offsetBytes` (inside the extent) to where its grain lives. */
  async lookup(offsetBytes: number, maxLengthBytes: number, joinRuns = false): Promise<GrainMapping> {
    const grainIndex = Math.floor(offsetBytes / this.grainBytes);
    const offsetInGrainBytes = offsetBytes - grainIndex * this.grainBytes;
    const lengthBytes = Math.min(maxLengthBytes, this.grainBytes - offsetInGrainBytes);
    const gtesPerGt = this.header.gtesPerGt;
    const gdIndex = Math.floor(grainIndex / gtesPerGt);
    // A run never leaves this grain table: grains after `tableEnd` need another table.
    const tableEndBytes = (gdIndex + 1) * gtesPerGt * this.grainBytes;
    const runLimitBytes = joinRuns ? Math.min(maxLengthBytes, tableEndBytes - offsetBytes) : lengthBytes;
    const gdEntry = this.gd[gdIndex] ?? 0;
    if (gdEntry === 0) return { kind: 'unallocated', lengthBytes: runLimitBytes };
    const table = await this.grainTable(gdIndex, gdEntry);
    const first = grainIndex % gtesPerGt;
    const gte = table[first] ?? 0;
    // Neighbouring grains of the same kind (and, for data, host-contiguous) join the run, so one read
    // or one block-status extent covers them: a convert reads whole runs instead of grain by grain.
    const runOf = (sameKind: (entry: number, step: number) => boolean): number => {
      let runBytes = lengthBytes;
      for (let step = 1; runBytes < runLimitBytes && sameKind(table[first + step] ?? 0, step); step++)
        runBytes = Math.min(runLimitBytes, runBytes + this.grainBytes);
      return runBytes;
    };
    if (gte === 0) return { kind: 'unallocated', lengthBytes: runOf((entry) => entry === 0) };
    if (gte === GTE_ZEROED && this.hasZeroGrain)
      return { kind: 'zero', lengthBytes: runOf((entry) => entry === GTE_ZEROED) };
    const grainHostOffsetBytes = gte * SECTOR_BYTES;
    if (grainHostOffsetBytes >= this.fileEndBytes) {
      throw new CorruptImageError({
        file: this.file.path,
        offsetBytes: gdEntry * SECTOR_BYTES + (grainIndex % gtesPerGt) * 4,
        lengthBytes: 4,
        message: `grain table entry for grain ${grainIndex} points past the end of the file (${grainHostOffsetBytes})`,
      });
    }
    if (this.isCompressed)
      return { kind: 'compressed', lengthBytes, grainHostOffsetBytes, offsetInGrainBytes };
    const sectorsPerGrain = this.grainBytes / SECTOR_BYTES;
    const runBytes = runOf(
      (entry, step) =>
        entry === gte + step * sectorsPerGrain &&
        (entry + sectorsPerGrain) * SECTOR_BYTES <= this.fileEndBytes,
    );
    return {
      kind: 'data',
      lengthBytes: runBytes,
      hostOffsetBytes: grainHostOffsetBytes + offsetInGrainBytes,
    };
  }

  /** Inflates the grain at `grainHostOffsetBytes` (zlib stream behind a marker when the extent has markers). */
  async readCompressedGrain(grainHostOffsetBytes: number): Promise<Buffer> {
    if (this.lastGrain?.hostOffsetBytes === grainHostOffsetBytes) return this.lastGrain.bytes;
    this.checkGrainSize();
    const hasMarker = (this.header.flags & FLAG_MARKER) !== 0;
    const gapBytes = grainHostOffsetBytes - this.lastGrainEndBytes;
    const isSequential = this.lastGrainEndBytes >= 0 && gapBytes >= 0 && gapBytes <= SEQUENTIAL_GAP_BYTES;
    const marker = hasMarker
      ? await this.compressedBytes(grainHostOffsetBytes, GRAIN_MARKER_BYTES, isSequential)
      : undefined;
    const payload = this.payloadAt(grainHostOffsetBytes, marker);
    const compressed = await this.compressedBytes(payload.offsetBytes, payload.lengthBytes, isSequential);
    this.lastGrainEndBytes = payload.offsetBytes + payload.lengthBytes;
    let bytes = this.inflateGrain(grainHostOffsetBytes, compressed);
    if (bytes.length < this.grainBytes)
      bytes = Buffer.concat([bytes, Buffer.alloc(this.grainBytes - bytes.length)]);
    this.lastGrain = { hostOffsetBytes: grainHostOffsetBytes, bytes };
    return bytes;
  }

  /**
   * Fills each target with its grain's bytes (a convert's multi-grain read). Grains laid out in file
   * order close together, as every stream-optimized writer lays them out, are read with one pread for
   * all their records: concurrent readers (convert's parallel chunks) would otherwise take turns
   * replacing the one read-ahead window. Other grains go one by one through readCompressedGrain.
   */
  async readCompressedGrains(grains: readonly CompressedGrainRead[]): Promise<void> {
    const recordLimitBytes = GRAIN_MARKER_BYTES + 2 * this.grainBytes;
    const first = grains[0];
    const last = grains[grains.length - 1];
    const isCompact = grains.every((grain, index) => {
      const gapBytes = grain.grainHostOffsetBytes - (grains[index - 1]?.grainHostOffsetBytes ?? 0);
      return index === 0 || (gapBytes > 0 && gapBytes <= recordLimitBytes + SEQUENTIAL_GAP_BYTES);
    });
    if (!first || !last || grains.length === 1 || !isCompact) {
      for (const grain of grains) {
        const bytes = await this.readCompressedGrain(grain.grainHostOffsetBytes);
        grain.target.set(
          bytes.subarray(grain.offsetInGrainBytes, grain.offsetInGrainBytes + grain.target.length),
        );
      }
      return;
    }
    this.checkGrainSize();
    const spanStartBytes = first.grainHostOffsetBytes;
    const span = Buffer.allocUnsafe(
      Math.min(this.fileEndBytes, last.grainHostOffsetBytes + recordLimitBytes) - spanStartBytes,
    );
    span.fill(0, await this.file.read(spanStartBytes, span));
    const hasMarker = (this.header.flags & FLAG_MARKER) !== 0;
    for (const grain of grains) {
      const at = grain.grainHostOffsetBytes - spanStartBytes;
      const payload = this.payloadAt(
        grain.grainHostOffsetBytes,
        hasMarker ? span.subarray(at, at + GRAIN_MARKER_BYTES) : undefined,
      );
      const from = payload.offsetBytes - spanStartBytes;
      const plain = this.inflateGrain(
        grain.grainHostOffsetBytes,
        span.subarray(from, from + payload.lengthBytes),
      );
      const wanted = plain.subarray(grain.offsetInGrainBytes, grain.offsetInGrainBytes + grain.target.length);
      grain.target.set(wanted);
      // A grain whose stream ends early reads as zeros after it, as readCompressedGrain pads it.
      grain.target.fill(0, wanted.length);
    }
  }

  private checkGrainSize(): void {
    if (this.grainBytes > MAX_COMPRESSED_GRAIN_BYTES) {
      throw new UnsupportedError({
        format: 'vmdk',
        feature: `compressed grains of ${this.grainBytes} bytes`,
      });
    }
  }

  /**
   * Where the compressed payload of the grain at `grainHostOffsetBytes` lies: after its marker, as long
   * as the marker says; without markers, up to two grains' worth (zlib stops at the stream's end).
   * Throws CorruptImageError for a length that is 0, too large or past the end of the file.
   */
  private payloadAt(
    grainHostOffsetBytes: number,
    marker: Buffer | undefined,
  ): { offsetBytes: number; lengthBytes: number } {
    const offsetBytes = marker ? grainHostOffsetBytes + GRAIN_MARKER_BYTES : grainHostOffsetBytes;
    const lengthBytes = marker
      ? marker.readUInt32LE(8)
      : Math.min(2 * this.grainBytes, this.fileEndBytes - grainHostOffsetBytes);
    if (
      lengthBytes === 0 ||
      lengthBytes > 2 * this.grainBytes ||
      offsetBytes + lengthBytes > this.fileEndBytes
    ) {
      throw new CorruptImageError({
        file: this.file.path,
        offsetBytes: grainHostOffsetBytes,
        lengthBytes,
        message: 'compressed grain size is invalid',
      });
    }
    return { offsetBytes, lengthBytes };
  }

  /** Inflates one grain's payload (at most a grain; shorter when its stream ends early). */
  private inflateGrain(grainHostOffsetBytes: number, compressed: Uint8Array): Buffer {
    try {
      // One output chunk of a whole grain: zlib's default 16 KiB chunks would be concatenated (copied)
      // into the grain afterwards, which cost as much as the inflate of a stored (incompressible) grain.
      return inflateSync(compressed, {
        maxOutputLength: this.grainBytes,
        finishFlush: Z_SYNC_FLUSH,
        chunkSize: Math.max(MIN_ZLIB_CHUNK_BYTES, this.grainBytes),
      });
    } catch (cause) {
      throw new CorruptImageError({
        file: this.file.path,
        offsetBytes: grainHostOffsetBytes,
        lengthBytes: compressed.length,
        message: 'compressed grain does not inflate',
        cause,
      });
    }
  }

  /**
   * `lengthBytes` of compressed data at `offsetBytes` (zeros past the end of the file). Grains read in
   * file order (a convert of a stream-optimized image) share one READ_AHEAD_BYTES window: one pread
   * per window instead of two per grain. Random reads (NBD) read just what they need.
   */
  private async compressedBytes(
    offsetBytes: number,
    lengthBytes: number,
    isSequential: boolean,
  ): Promise<Buffer> {
    const window = this.readAhead;
    if (
      window &&
      offsetBytes >= window.offsetBytes &&
      offsetBytes + lengthBytes <= window.offsetBytes + window.bytes.length
    )
      return window.bytes.subarray(
        offsetBytes - window.offsetBytes,
        offsetBytes - window.offsetBytes + lengthBytes,
      );
    const bytes = Buffer.allocUnsafe(
      isSequential
        ? Math.max(lengthBytes, Math.min(READ_AHEAD_BYTES, this.fileEndBytes - offsetBytes))
        : lengthBytes,
    );
    bytes.fill(0, await this.file.read(offsetBytes, bytes));
    if (isSequential) this.readAhead = { offsetBytes, bytes };
    return bytes.subarray(0, lengthBytes);
  }

  private async setGte(grainIndex: number, value: number): Promise<void> {
    const gdIndex = Math.floor(grainIndex / this.header.gtesPerGt);
    const inTable = grainIndex % this.header.gtesPerGt;
    const gdEntry = await this.tableFor(gdIndex);
    const table = await this.grainTable(gdIndex, gdEntry);
    table[inTable] = value;
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(value, 0);
    await this.file.write(gdEntry * SECTOR_BYTES + inTable * 4, bytes);
    const rgdEntry = this.rgd?.[gdIndex] ?? 0;
    if (rgdEntry !== 0) await this.file.write(rgdEntry * SECTOR_BYTES + inTable * 4, bytes);
  }

  /** True when the grain lies inside the grain directory (its table exists or can be appended). */
  canAllocate(grainIndex: number): boolean {
    return Math.floor(grainIndex / this.header.gtesPerGt) < this.gd.length;
  }

  /**
   * The grain table (in sectors) for directory entry `gdIndex`, appending zeroed tables (one per
   * directory) when the entry is 0: VMware and qemu preallocate them, other writers may not.
   */
  private async tableFor(gdIndex: number): Promise<number> {
    const gdEntry = this.gd[gdIndex] ?? 0;
    if (gdEntry !== 0) return gdEntry;
    if (gdIndex >= this.gd.length) {
      throw new CorruptImageError({
        file: this.file.path,
        offsetBytes: this.gdOffsetBytes,
        message: `grain directory has no entry ${gdIndex}`,
      });
    }
    const tableSectors = Math.ceil(this.gtBytes / SECTOR_BYTES);
    const appendTable = (): number => {
      const offsetBytes = Math.ceil(this.fileEndBytes / SECTOR_BYTES) * SECTOR_BYTES;
      this.fileEndBytes = offsetBytes + tableSectors * SECTOR_BYTES;
      return offsetBytes / SECTOR_BYTES;
    };
    const entry = appendTable();
    const redundantEntry = this.rgd && (this.rgd[gdIndex] ?? 0) === 0 ? appendTable() : 0;
    // The zeroed tables exist (truncate) before any directory entry points at them.
    await this.file.truncate(this.fileEndBytes);
    const bytes = Buffer.alloc(4);
    if (redundantEntry !== 0 && this.rgd) {
      bytes.writeUInt32LE(redundantEntry, 0);
      await this.file.write(this.rgdOffsetBytes + gdIndex * 4, bytes);
      this.rgd[gdIndex] = redundantEntry;
    }
    bytes.writeUInt32LE(entry, 0);
    await this.file.write(this.gdOffsetBytes + gdIndex * 4, bytes);
    this.gd[gdIndex] = entry;
    return entry;
  }

  /**
   * Reserves a zero-filled grain at the end of the file (not yet referenced); returns its host offset.
   * The caller writes the grain's bytes, then calls `commitGrain` (data before metadata).
   */
  async reserveGrain(): Promise<number> {
    const hostOffsetBytes = Math.ceil(this.fileEndBytes / SECTOR_BYTES) * SECTOR_BYTES;
    this.fileEndBytes = hostOffsetBytes + this.grainBytes;
    await this.file.truncate(this.fileEndBytes);
    return hostOffsetBytes;
  }

  async commitGrain(grainIndex: number, hostOffsetBytes: number): Promise<void> {
    await this.setGte(grainIndex, hostOffsetBytes / SECTOR_BYTES);
  }

  /** Reserves `count` contiguous zero-filled grains at the end of the file; returns the first's offset. */
  async reserveGrains(count: number): Promise<number> {
    const hostOffsetBytes = Math.ceil(this.fileEndBytes / SECTOR_BYTES) * SECTOR_BYTES;
    this.fileEndBytes = hostOffsetBytes + count * this.grainBytes;
    await this.file.truncate(this.fileEndBytes);
    return hostOffsetBytes;
  }

  /**
   * Points grains [firstGrainIndex, firstGrainIndex + count) at consecutive grains from `hostOffsetBytes`,
   * writing each touched grain table's changed entries once (and the redundant table's).
   */
  async commitGrains(firstGrainIndex: number, hostOffsetBytes: number, count: number): Promise<void> {
    await this.setGtes(
      firstGrainIndex,
      count,
      (index) => (hostOffsetBytes + index * this.grainBytes) / SECTOR_BYTES,
    );
  }

  /**
   * Sets the entries of grains [firstGrainIndex, firstGrainIndex + count) to `entryOf(i)` (sectors), with
   * one write per touched grain table (and one per redundant table).
   */
  private async setGtes(
    firstGrainIndex: number,
    count: number,
    entryOf: (index: number) => number,
  ): Promise<void> {
    let done = 0;
    while (done < count) {
      const grainIndex = firstGrainIndex + done;
      const gdIndex = Math.floor(grainIndex / this.header.gtesPerGt);
      const firstInTable = grainIndex % this.header.gtesPerGt;
      const inThisTable = Math.min(count - done, this.header.gtesPerGt - firstInTable);
      const gdEntry = await this.tableFor(gdIndex);
      const table = await this.grainTable(gdIndex, gdEntry);
      const bytes = Buffer.alloc(inThisTable * 4);
      for (let i = 0; i < inThisTable; i++) {
        const value = entryOf(done + i);
        table[firstInTable + i] = value;
        bytes.writeUInt32LE(value, i * 4);
      }
      await this.file.write(gdEntry * SECTOR_BYTES + firstInTable * 4, bytes);
      const rgdEntry = this.rgd?.[gdIndex] ?? 0;
      if (rgdEntry !== 0) await this.file.write(rgdEntry * SECTOR_BYTES + firstInTable * 4, bytes);
      done += inThisTable;
    }
  }

  /** Marks a whole grain as zeroed (needs the zeroed-grain flag). */
  async zeroGrain(grainIndex: number): Promise<void> {
    await this.setGte(grainIndex, GTE_ZEROED);
  }

  /**
   * Appends one compressed grain with its marker (stream-optimized) and points the grain table at it.
   * The grain must be unallocated: compressed grains are written once, as qemu writes them.
   */
  async writeCompressedGrain(grainIndex: number, grain: Uint8Array): Promise<void> {
    await this.appendCompressedGrains(grainIndex, [deflateSync(grain)]);
  }

  /**
   * Appends whole grains [firstGrainIndex, firstGrainIndex + grains.length) as writeCompressedGrain does
   * one by one (the same bytes in the same places), but deflated together on node:zlib's thread pool,
   * with one write for the records and one per grain table for the entries (data before metadata).
   */
  async writeCompressedGrains(firstGrainIndex: number, grains: readonly Uint8Array[]): Promise<void> {
    const payloads = await Promise.all(grains.map((grain) => this.deflateGrain(grain)));
    await this.appendCompressedGrains(firstGrainIndex, payloads);
  }

  /** One whole grain deflated on node:zlib's thread pool: the payload appendCompressedGrains takes. */
  deflateGrain(grain: Uint8Array): Promise<Buffer> {
    // One output chunk per grain (an incompressible grain grows by a few bytes per stored block), so no
    // chunks are concatenated; the chunk size changes nothing in the deflate stream.
    return deflateAsync(grain, { chunkSize: this.grainBytes + Math.ceil(this.grainBytes / 64) + 64 });
  }

  /**
   * Appends the records (marker, payload, sector padding) of grains [firstGrainIndex, +payloads.length)
   * deflated already, then points their entries at them. The grains must be unallocated.
   */
  async appendCompressedGrains(firstGrainIndex: number, payloads: readonly Buffer[]): Promise<void> {
    const recordBytesOf = (payload: Buffer): number =>
      Math.ceil((GRAIN_MARKER_BYTES + payload.length) / SECTOR_BYTES) * SECTOR_BYTES;
    const records = Buffer.alloc(payloads.reduce((sum, payload) => sum + recordBytesOf(payload), 0));
    const view = viewOf(records);
    const recordOffsets: number[] = [];
    let at = 0;
    for (const [index, payload] of payloads.entries()) {
      recordOffsets.push(at);
      view.setBigUint64(at, BigInt(((firstGrainIndex + index) * this.grainBytes) / SECTOR_BYTES), true);
      view.setUint32(at + 8, payload.length, true);
      records.set(payload, at + GRAIN_MARKER_BYTES);
      at += recordBytesOf(payload);
    }
    const hostOffsetBytes = Math.ceil(this.fileEndBytes / SECTOR_BYTES) * SECTOR_BYTES;
    this.readAhead = undefined;
    await this.file.write(hostOffsetBytes, records);
    this.fileEndBytes = hostOffsetBytes + records.length;
    await this.setGtes(
      firstGrainIndex,
      payloads.length,
      (index) => (hostOffsetBytes + recordOffsets[index]!) / SECTOR_BYTES,
    );
  }

  /** Grain index range [first, last] whose tables are absent, for fast skipping in check and status. */
  gtCoverageBytes(): number {
    return this.header.gtesPerGt * this.grainBytes;
  }

  /**
   * Grows the extent to `capacitySectors` (beyond qemu 7.2): new grain tables are appended zeroed, and
   * the grain directories take the new entries in their sector padding. Throws UnsupportedError when the
   * directories have no room (the tables right after them would have to move: convert instead).
   */
  async grow(capacitySectors: number): Promise<void> {
    if (this.header.gdOffsetSectors === GD_AT_END || this.isCompressed) {
      throw new UnsupportedError({ format: 'vmdk', feature: 'resizing stream-optimized extents' });
    }
    const header = { ...this.header, capacitySectors };
    const entryCount = l1EntryCount(header);
    const roomOf = (table: Uint32Array, offsetBytes: number): number => {
      let firstTableBytes = Number.POSITIVE_INFINITY;
      for (const entry of table)
        if (entry !== 0) firstTableBytes = Math.min(firstTableBytes, entry * SECTOR_BYTES);
      return Math.floor((firstTableBytes - offsetBytes) / 4);
    };
    const room = Math.min(
      roomOf(this.gd, this.gdOffsetBytes),
      this.rgd ? roomOf(this.rgd, this.rgdOffsetBytes) : Number.POSITIVE_INFINITY,
    );
    if (entryCount > room) {
      throw new UnsupportedError({
        format: 'vmdk',
        feature: 'growing past the grain directory',
        message: `${this.file.path}: the grain directory has room for ${room} tables; ${entryCount} are needed (convert to a new image instead)`,
      });
    }
    const extend = async (table: Uint32Array, offsetBytes: number): Promise<Uint32Array> => {
      const grown = new Uint32Array(entryCount);
      grown.set(table);
      const entries = Buffer.alloc((entryCount - table.length) * 4);
      for (let i = table.length; i < entryCount; i++) {
        const tableOffsetBytes = Math.ceil(this.fileEndBytes / SECTOR_BYTES) * SECTOR_BYTES;
        this.fileEndBytes = tableOffsetBytes + Math.ceil(this.gtBytes / SECTOR_BYTES) * SECTOR_BYTES;
        grown[i] = tableOffsetBytes / SECTOR_BYTES;
        entries.writeUInt32LE(grown[i]!, (i - table.length) * 4);
      }
      await this.file.truncate(this.fileEndBytes);
      // Tables first (zeroed by the truncate), then the directory entries that point at them.
      await this.file.sync();
      await this.file.write(offsetBytes + table.length * 4, entries);
      return grown;
    };
    if (entryCount > this.gd.length) {
      this.gd = await extend(this.gd, this.gdOffsetBytes);
      if (this.rgd) this.rgd = await extend(this.rgd, this.rgdOffsetBytes);
    }
    const capacity = Buffer.alloc(8);
    capacity.writeBigUInt64LE(BigInt(capacitySectors), 0);
    await this.file.write(12, capacity);
    (this.header as { capacitySectors: number }).capacitySectors = capacitySectors;
    this.sizeBytes = capacitySectors * SECTOR_BYTES;
  }

  get endOfFileBytes(): number {
    return this.fileEndBytes;
  }
}

/** Reads the footer copy of the header of a stream-optimized file (qemu's checks on its markers). */
async function readFooterHeader(file: HostFile, fileSizeBytes: number): Promise<SparseHeader> {
  const footerOffsetBytes = fileSizeBytes - 3 * SECTOR_BYTES;
  if (footerOffsetBytes < SECTOR_BYTES) {
    throw new ImageFormatError({
      file: file.path,
      offsetBytes: 56,
      message: 'Invalid footer (file too short for a stream-optimized footer)',
    });
  }
  const bytes = await readExact(file, footerOffsetBytes, 3 * SECTOR_BYTES, 'VMDK footer');
  const footerMarker = bytes.subarray(0, SECTOR_BYTES);
  const eosMarker = bytes.subarray(2 * SECTOR_BYTES);
  if (
    footerMarker.readUInt32LE(8) !== 0 ||
    footerMarker.readUInt32LE(12) !== MARKER_FOOTER ||
    eosMarker.readBigUInt64LE(0) !== 0n ||
    eosMarker.readUInt32LE(8) !== 0 ||
    eosMarker.readUInt32LE(12) !== MARKER_EOS
  ) {
    throw new ImageFormatError({
      file: file.path,
      offsetBytes: footerOffsetBytes,
      message: 'Invalid footer',
    });
  }
  const header = parseSparseHeader(
    bytes.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES),
    file.path,
    footerOffsetBytes + SECTOR_BYTES,
  );
  if (header.gdOffsetSectors === GD_AT_END) {
    throw new ImageFormatError({
      file: file.path,
      offsetBytes: footerOffsetBytes + SECTOR_BYTES + 56,
      message: 'Invalid footer (grain directory still at end)',
    });
  }
  return header;
}
