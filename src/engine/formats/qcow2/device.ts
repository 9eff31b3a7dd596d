// Guest I/O on an open qcow2 image: read (with backing fall-through and compressed clusters), write
// (allocation, COW of partial clusters), zero clusters, discard, compressed writes, block status, info.
// Implements qcow2.txt "Cluster mapping"; metadata order and flushing live in image.ts.

import type {
  BlockDevice,
  Extent,
  ImageInfo,
  SnapshotOperations,
  WriteOptions,
  WriteZeroesOptions,
} from '../../block-device.ts';
import { InvalidOptionError, PermissionError, UnsupportedError } from '../../errors.ts';
import { amendQcow2 } from './amend.ts';
import { setQcow2BackingFile } from './backing.ts';
import {
  ALL_SUBCLUSTERS,
  classifyStandardEntry,
  ENTRY_READS_ZERO,
  ENTRY_UNALLOCATED,
  type L2Mapping,
  l1Offset,
  splitSubclusters,
} from './cluster-map.ts';
import { compressCluster, decompressCluster } from './compress.ts';
import { isDataFileRaw, zeroDataFileRange } from './data-file.ts';
import { makeQcow2Empty } from './empty.ts';
import type { Qcow2Encryption } from './encryption.ts';
import { INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE } from './header.ts';
import { Qcow2Image } from './image.ts';
import { Mutex } from './mutex.ts';
import { readCachedQcow2 } from './read-cached.ts';
import { growImage, shrinkImage } from './resize.ts';
import { snapshotOperations } from './snapshot.ts';
import { collectExtents, describeImage } from './status.ts';
import { TurnBatch, WriteCoalescer } from './write-coalescer.ts';

/** Compressed clusters one read inflates at once (libuv's pool has 4 threads by default). */
const DECOMPRESS_CONCURRENCY = 4;
/** A cluster writeCompressed shrank: its guest range and its compressed bytes. */
interface CompressedCluster {
  offsetBytes: number;
  lengthBytes: number;
  payload: Buffer;
}
/** Longest plain run writeCompressed's incompressible clusters are joined into (one convert chunk). */
const INCOMPRESSIBLE_RUN_BYTES = 2 * 1024 * 1024;

type Piece =
  | { kind: 'host'; bufferOffset: number; lengthBytes: number; hostOffsetBytes: number }
  | { kind: 'zero'; bufferOffset: number; lengthBytes: number }
  | { kind: 'backing'; bufferOffset: number; lengthBytes: number; guestOffsetBytes: number }
  | {
      kind: 'compressed';
      bufferOffset: number;
      lengthBytes: number;
      inClusterBytes: number;
      mapping: L2Mapping;
    };

export class Qcow2Device implements BlockDevice {
  readonly image: Qcow2Image;
  sizeBytes: number;
  readonly isReadOnly: boolean;
  readonly preferredBlockSizeBytes = 512;
  readonly backing: BlockDevice | undefined;
  readonly formatName = 'qcow2';
  readonly compressedWriteUnitBytes: number | undefined;
  private readonly lock = new Mutex();
  private closed = false;
  /** One decompressed cluster, keyed by its host offset: sequential small reads of a compressed cluster. */
  private lastDecompressed: { hostOffsetBytes: number; data: Buffer } | undefined;
  /** writeCompressed's compressed clusters, stored a batch at a time (storeCompressed). */
  private readonly compressedBatch = new TurnBatch<CompressedCluster>((clusters) =>
    this.lock.run(() => this.storeCompressed(clusters)),
  );
  /** writeCompressed's clusters that did not shrink, written plain in runs (write-coalescer.ts). */
  private readonly incompressible = new WriteCoalescer(
    (offsetBytes, data) =>
      this.lock.run(async () => {
        await this.image.bitmaps?.markDirty(offsetBytes, data.length);
        let done = 0;
        while (done < data.length) done += await this.writeRun(offsetBytes + done, data.subarray(done));
      }),
    INCOMPRESSIBLE_RUN_BYTES,
  );

  /** Internal snapshots (list, create, apply, delete, open a read-only view). */
  readonly snapshots: SnapshotOperations | undefined;
  /** Rewrites the backing file name and format in the header (backing.ts), under the metadata lock. */
  readonly setBackingFile = (name: string | undefined, format: string | undefined): Promise<void> =>
    this.lock.run(() => setQcow2BackingFile(this.image, name, format));
  /** Unmaps every cluster of the active tables (empty.ts), as qemu-img commit leaves the top image. */
  readonly makeEmpty = (): Promise<void> =>
    this.lock.run(async () => {
      await this.image.bitmaps?.markAllDirty();
      await makeQcow2Empty(this.image);
    });
  /** qemu-img amend -o (amend.ts): compat, lazy_refcounts, refcount_bits, size. */
  readonly amend = (options: Record<string, string>): Promise<void> =>
    this.lock.run(() => amendQcow2(this.image, options));
  /** A snapshot view shares its parent's file and backing: closing it closes neither. */
  private readonly isView: boolean;
  /** The data cipher of an encrypted image (encryption.ts): data clusters pass through it, metadata not. */
  private readonly encryption: Qcow2Encryption | undefined;
  /** Synchronous read of what the L2 cache maps and the page cache holds (read-cached.ts); see constructor. */
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;

  constructor(
    image: Qcow2Image,
    backing: BlockDevice | undefined,
    options: { isView?: boolean; encryption?: Qcow2Encryption } = {},
  ) {
    this.image = image;
    this.backing = backing;
    this.isView = options.isView ?? false;
    this.encryption = options.encryption;
    this.sizeBytes = image.header.virtualSizeBytes;
    this.isReadOnly = image.readOnly;
    // qemu refuses compressed writes to encrypted images too (a compressed cluster is never enciphered),
    // and to images with an external data file.
    const canCompress = !image.readOnly && !this.encryption && !image.hasDataFile;
    this.compressedWriteUnitBytes = canCompress ? image.clusterSizeBytes : undefined;
    if (!canCompress) this.writeCompressed = undefined;
    // Only where guest bytes are stored host bytes: encrypted clusters need the cipher and an external
    // data file is another file. While a metadata update holds the lock, tables may be half edited.
    const plainBytes =
      !this.encryption &&
      image.header.cryptMethod === 0 &&
      !image.dataFile &&
      (image.header.incompatibleFeatures & INCOMPAT_DATA_FILE) === 0n;
    if (image.file.readCached && plainBytes) {
      this.readCached = (offsetBytes, buffer) =>
        this.lock.isFree ? readCachedQcow2(this.image, this.backing !== undefined, offsetBytes, buffer) : 0;
    }
    this.snapshots = this.isView
      ? undefined
      : snapshotOperations({
          image,
          exclusive: (work) =>
            this.lock.run(async () => {
              await this.image.flush();
              this.lastDecompressed = undefined;
              return work();
            }),
          openView: (l1, sizeBytes) => {
            const header = { ...image.header, virtualSizeBytes: sizeBytes, l1EntryCount: l1.length / 8 };
            const view = new Qcow2Image({
              file: image.file,
              path: image.path,
              header,
              l1,
              refcountTable: Buffer.alloc(image.clusterSizeBytes),
              readOnly: true,
            });
            return new Qcow2Device(view, backing, { isView: true, encryption: this.encryption });
          },
        });
    const operations = this.snapshots;
    if (operations && image.hasDataFile) {
      const refuse = (): Promise<never> =>
        Promise.reject(
          new UnsupportedError({
            format: 'qcow2',
            feature: 'snapshots with data_file',
            message: `${image.path}: internal snapshots are not supported with an external data file`,
          }),
        );
      this.snapshots = { ...operations, create: refuse, apply: refuse };
    } else if (operations && image.bitmaps) {
      // Reverting rewrites the whole guest view: enabled bitmaps are marked all dirty first (bitmaps.ts).
      this.snapshots = {
        ...operations,
        apply: async (nameOrId) => {
          await this.lock.run(async () => image.bitmaps?.markAllDirty());
          await operations.apply(nameOrId);
        },
      };
    }
  }

  private get clusterSizeBytes(): number {
    return this.image.clusterSizeBytes;
  }

  // ---- reading ----

  private async mapRead(offsetBytes: number, lengthBytes: number): Promise<Piece[]> {
    const pieces: Piece[] = [];
    const clusterSizeBytes = this.clusterSizeBytes;
    let done = 0;
    while (done < lengthBytes) {
      const guestOffsetBytes = offsetBytes + done;
      const guestCluster = Math.floor(guestOffsetBytes / clusterSizeBytes);
      const inClusterBytes = guestOffsetBytes % clusterSizeBytes;
      const pieceBytes = Math.min(clusterSizeBytes - inClusterBytes, lengthBytes - done);
      const previous = pieces[pieces.length - 1];
      if (previous && this.continuesPiece(previous, guestCluster, inClusterBytes)) {
        previous.lengthBytes += pieceBytes;
        done += pieceBytes;
        continue;
      }
      const { mapping } = this.image.lookupCached(guestCluster) ?? (await this.image.lookup(guestCluster));
      if (mapping.subclusterAllocated !== undefined && mapping.kind !== 'compressed') {
        for (const run of splitSubclusters(mapping, this.image.clusterBits, inClusterBytes, pieceBytes)) {
          this.addPiece(
            pieces,
            run.mapping,
            done + run.inClusterBytes - inClusterBytes,
            run.lengthBytes,
            run.inClusterBytes,
            guestOffsetBytes + run.inClusterBytes - inClusterBytes,
          );
        }
      } else {
        this.addPiece(pieces, mapping, done, pieceBytes, inClusterBytes, guestOffsetBytes);
      }
      done += pieceBytes;
    }
    return pieces;
  }

  /**
   * Whether guest cluster `guestCluster` (from `inClusterBytes` on) extends `previous` as addPiece()
   * would merge it, judged from its standard L2 entry's words when the table is cached: a 2 MiB read
   * maps 32 clusters, and most continue the piece before them. False when unsure (the caller decodes).
   */
  private continuesPiece(previous: Piece, guestCluster: number, inClusterBytes: number): boolean {
    const image = this.image;
    if (image.extendedL2 || image.hasDataFile || previous.kind === 'compressed') return false;
    const l2EntryCount = image.l2EntryCount;
    const l1Index = Math.floor(guestCluster / l2EntryCount);
    const l2OffsetBytes = l1Index < image.l1EntryCount ? l1Offset(image.l1, l1Index) : 0;
    let entry = ENTRY_UNALLOCATED;
    if (l2OffsetBytes !== 0) {
      // A table in the cache had its offset checked when lookup() loaded it.
      const table = image.l2Cache.peek(l2OffsetBytes);
      if (!table) return false;
      entry = classifyStandardEntry(table, guestCluster % l2EntryCount, image.clusterSizeBytes);
    }
    switch (previous.kind) {
      case 'host':
        return entry > 0 && previous.hostOffsetBytes + previous.lengthBytes === entry + inClusterBytes;
      case 'zero':
        return entry === ENTRY_READS_ZERO || (entry === ENTRY_UNALLOCATED && !this.backing);
      case 'backing':
        return entry === ENTRY_UNALLOCATED && this.backing !== undefined;
    }
  }

  /** Appends how to fill `lengthBytes` at `bufferOffset`, merging with the previous piece when contiguous. */
  private addPiece(
    pieces: Piece[],
    mapping: L2Mapping,
    bufferOffset: number,
    lengthBytes: number,
    inClusterBytes: number,
    guestOffsetBytes: number,
  ): void {
    const previous = pieces[pieces.length - 1];
    switch (mapping.kind) {
      case 'normal': {
        const hostOffsetBytes = mapping.hostOffsetBytes + inClusterBytes;
        if (previous?.kind === 'host' && previous.hostOffsetBytes + previous.lengthBytes === hostOffsetBytes)
          previous.lengthBytes += lengthBytes;
        else pieces.push({ kind: 'host', bufferOffset, lengthBytes, hostOffsetBytes });
        return;
      }
      case 'zero-plain':
      case 'zero-alloc':
        if (previous?.kind === 'zero') previous.lengthBytes += lengthBytes;
        else pieces.push({ kind: 'zero', bufferOffset, lengthBytes });
        return;
      case 'unallocated':
        if (this.backing) {
          if (previous?.kind === 'backing') previous.lengthBytes += lengthBytes;
          else pieces.push({ kind: 'backing', bufferOffset, lengthBytes, guestOffsetBytes });
        } else if (previous?.kind === 'zero') previous.lengthBytes += lengthBytes;
        else pieces.push({ kind: 'zero', bufferOffset, lengthBytes });
        return;
      case 'compressed':
        pieces.push({ kind: 'compressed', bufferOffset, lengthBytes, inClusterBytes, mapping });
    }
  }

  /** Reads `buffer.length` guest bytes of the backing device at `guestOffsetBytes`; zeros past its end. */
  private async readBacking(guestOffsetBytes: number, buffer: Uint8Array): Promise<void> {
    const backing = this.backing;
    const available = backing
      ? Math.max(0, Math.min(buffer.length, backing.sizeBytes - guestOffsetBytes))
      : 0;
    if (backing && available > 0) await backing.read(guestOffsetBytes, buffer.subarray(0, available));
    buffer.fill(0, available);
  }

  private async readCompressed(mapping: L2Mapping): Promise<Buffer> {
    if (this.lastDecompressed?.hostOffsetBytes === mapping.hostOffsetBytes) return this.lastDecompressed.data;
    const payload = Buffer.alloc(mapping.compressedSizeBytes);
    await this.image.file.read(mapping.hostOffsetBytes, payload);
    const data = await decompressCluster(payload, this.clusterSizeBytes, this.image.header.compressionType);
    if (!data)
      throw this.image.corrupt(
        'compressed cluster does not decompress to one cluster',
        mapping.hostOffsetBytes,
        mapping.compressedSizeBytes,
      );
    this.lastDecompressed = { hostOffsetBytes: mapping.hostOffsetBytes, data };
    return data;
  }

  /** Reads data clusters' bytes at `hostOffsetBytes` (guest `guestOffsetBytes`), deciphered when encrypted. */
  private async readData(
    hostOffsetBytes: number,
    guestOffsetBytes: number,
    target: Uint8Array,
  ): Promise<void> {
    const count = await this.image.dataHostFile.read(hostOffsetBytes, target);
    target.fill(0, count);
    if (this.encryption) target.set(this.encryption.decrypt(target, hostOffsetBytes, guestOffsetBytes));
  }

  /** Writes data clusters' bytes at `hostOffsetBytes` (guest `guestOffsetBytes`), enciphered when encrypted. */
  private async writeData(
    hostOffsetBytes: number,
    guestOffsetBytes: number,
    data: Uint8Array,
  ): Promise<void> {
    const stored = this.encryption ? this.encryption.encrypt(data, hostOffsetBytes, guestOffsetBytes) : data;
    await this.image.dataHostFile.write(hostOffsetBytes, stored);
  }

  /** `guestOffsetBytes` is where `buffer` starts in the guest (pieces are relative to it). */
  private async readPiece(piece: Piece, buffer: Uint8Array, guestOffsetBytes: number): Promise<void> {
    const target = buffer.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes);
    switch (piece.kind) {
      case 'host':
        await this.readData(piece.hostOffsetBytes, guestOffsetBytes + piece.bufferOffset, target);
        return;
      case 'zero':
        target.fill(0);
        return;
      case 'backing':
        await this.readBacking(piece.guestOffsetBytes, target);
        return;
      case 'compressed': {
        const data = await this.readCompressed(piece.mapping);
        target.set(data.subarray(piece.inClusterBytes, piece.inClusterBytes + piece.lengthBytes));
      }
    }
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    const aligned = this.sectorAligned(offsetBytes, buffer.length);
    if (aligned) {
      // Encrypted data deciphers in whole sectors: read the sectors around the range.
      const whole = new Uint8Array(aligned.lengthBytes);
      await this.read(aligned.offsetBytes, whole);
      buffer.set(
        whole.subarray(offsetBytes - aligned.offsetBytes, offsetBytes - aligned.offsetBytes + buffer.length),
      );
      return;
    }
    const pieces = await this.lock.run(() => this.mapRead(offsetBytes, buffer.length));
    const compressed = pieces.filter((piece) => piece.kind === 'compressed');
    if (compressed.length <= 1) {
      for (const piece of pieces) await this.readPiece(piece, buffer, offsetBytes);
      return;
    }
    // Compressed clusters inflate on the thread pool: keep a few in flight instead of one at a time.
    for (const piece of pieces)
      if (piece.kind !== 'compressed') await this.readPiece(piece, buffer, offsetBytes);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < compressed.length) {
        const piece = compressed[next++] as Piece;
        await this.readPiece(piece, buffer, offsetBytes);
      }
    };
    await Promise.all(Array.from({ length: Math.min(DECOMPRESS_CONCURRENCY, compressed.length) }, worker));
  }

  /** A guest cluster's current content (for COW): from this image, the backing file, or zeros. */
  /** A cluster this image alone owns, every byte of it stored: writes go straight to its host cluster. */
  private isWritableInPlace(mapping: L2Mapping): boolean {
    return (
      mapping.kind === 'normal' &&
      mapping.copied &&
      (mapping.subclusterAllocated === undefined || mapping.subclusterAllocated === ALL_SUBCLUSTERS)
    );
  }

  private async clusterContent(guestCluster: number, mapping: L2Mapping): Promise<Buffer> {
    const content = Buffer.alloc(this.clusterSizeBytes);
    if (mapping.subclusterAllocated !== undefined && mapping.kind !== 'compressed') {
      // Extended L2: assemble the cluster from its subclusters (data, zeros, backing) as a read would.
      const start = guestCluster * this.clusterSizeBytes;
      const lengthBytes = Math.min(this.clusterSizeBytes, this.sizeBytes - start);
      for (const piece of await this.mapRead(start, lengthBytes)) await this.readPiece(piece, content, start);
      return content;
    }
    switch (mapping.kind) {
      case 'normal': {
        await this.readData(mapping.hostOffsetBytes, guestCluster * this.clusterSizeBytes, content);
        break;
      }
      case 'compressed':
        (await this.readCompressed(mapping)).copy(content);
        break;
      case 'unallocated':
        if (this.backing) await this.readBacking(guestCluster * this.clusterSizeBytes, content);
        break;
      default:
        break;
    }
    return content;
  }

  // ---- writing ----

  private checkWritable(): void {
    if (this.isReadOnly)
      throw new PermissionError({
        file: this.image.path,
        message: 'write refused: the image is open read-only',
      });
    if (this.image.header.incompatibleFeatures & INCOMPAT_CORRUPT) {
      throw this.image.corrupt('the image is marked corrupt; writes are refused (run check -r all)');
    }
    this.encryption?.assertWritable();
  }

  async write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.checkWritable();
    await this.lock.run(async () => {
      await this.image.bitmaps?.markDirty(offsetBytes, data.length);
      await this.writeBytes(offsetBytes, data);
      if (options?.fua) await this.image.flush();
    });
  }

  /**
   * The whole 512-byte sectors around [offsetBytes, +lengthBytes) when the image is encrypted and the
   * range is not made of whole sectors; undefined otherwise. qcow2 guest sizes are whole sectors.
   */
  private sectorAligned(
    offsetBytes: number,
    lengthBytes: number,
  ): { offsetBytes: number; lengthBytes: number } | undefined {
    if (!this.encryption || (offsetBytes % 512 === 0 && lengthBytes % 512 === 0)) return undefined;
    const start = Math.floor(offsetBytes / 512) * 512;
    const end = Math.min(Math.ceil((offsetBytes + lengthBytes) / 512) * 512, this.sizeBytes);
    return { offsetBytes: start, lengthBytes: end - start };
  }

  /** Writes `data` at `offsetBytes` under the lock; partial sectors of an encrypted image are read first. */
  private async writeBytes(offsetBytes: number, data: Uint8Array): Promise<void> {
    const aligned = this.sectorAligned(offsetBytes, data.length);
    if (aligned) {
      const whole = new Uint8Array(aligned.lengthBytes);
      for (const piece of await this.mapRead(aligned.offsetBytes, aligned.lengthBytes))
        await this.readPiece(piece, whole, aligned.offsetBytes);
      whole.set(data, offsetBytes - aligned.offsetBytes);
      await this.writeBytes(aligned.offsetBytes, whole);
      return;
    }
    let done = 0;
    while (done < data.length) done += await this.writeRun(offsetBytes + done, data.subarray(done));
  }

  /** Writes a prefix of `data` at `offsetBytes` that one host run covers; returns the bytes written. */
  private async writeRun(offsetBytes: number, data: Uint8Array): Promise<number> {
    const clusterSizeBytes = this.clusterSizeBytes;
    const firstCluster = Math.floor(offsetBytes / clusterSizeBytes);
    const headBytes = offsetBytes % clusterSizeBytes;
    const l2OffsetBytes = await this.image.writableL2(firstCluster);
    const l2Index = firstCluster % this.image.l2EntryCount;
    const table = this.image.l2Cache.peek(l2OffsetBytes) ?? (await this.image.l2Cache.get(l2OffsetBytes));
    const maxClusters = Math.min(
      this.image.clustersLeftInL2(firstCluster),
      Math.ceil((headBytes + data.length) / clusterSizeBytes),
    );
    const first = this.image.decodeChecked(table, l2Index, l2OffsetBytes);
    if (this.isWritableInPlace(first)) {
      // In place: extend over following clusters whose host clusters follow on.
      let clusterCount = 1;
      while (clusterCount < maxClusters) {
        const next = this.image.decodeChecked(table, l2Index + clusterCount, l2OffsetBytes);
        if (
          !this.isWritableInPlace(next) ||
          next.hostOffsetBytes !== first.hostOffsetBytes + clusterCount * clusterSizeBytes
        )
          break;
        clusterCount++;
      }
      this.checkHostOffset(first.hostOffsetBytes, l2OffsetBytes, l2Index);
      const lengthBytes = Math.min(data.length, clusterCount * clusterSizeBytes - headBytes);
      await this.writeData(first.hostOffsetBytes + headBytes, offsetBytes, data.subarray(0, lengthBytes));
      this.lastDecompressed = undefined;
      return lengthBytes;
    }
    // Needs new clusters: gather the following clusters that also need allocation.
    const olds: L2Mapping[] = [first];
    while (olds.length < maxClusters) {
      const next = this.image.decodeChecked(table, l2Index + olds.length, l2OffsetBytes);
      if (this.isWritableInPlace(next)) break;
      olds.push(next);
    }
    const clusterCount = olds.length;
    const lengthBytes = Math.min(data.length, clusterCount * clusterSizeBytes - headBytes);
    const tailBytes = (headBytes + lengthBytes) % clusterSizeBytes;
    const hostCluster = await this.image.allocateDataClusters(firstCluster, clusterCount);
    const hostOffsetBytes = hostCluster * clusterSizeBytes;
    let written = 0;
    if (headBytes !== 0 || (clusterCount === 1 && tailBytes !== 0)) {
      const content = await this.clusterContent(firstCluster, first);
      const pieceBytes = Math.min(lengthBytes, clusterSizeBytes - headBytes);
      content.set(data.subarray(0, pieceBytes), headBytes);
      await this.writeData(hostOffsetBytes, firstCluster * clusterSizeBytes, content);
      written = pieceBytes;
    }
    const lastIsPartial = tailBytes !== 0 && written < lengthBytes;
    const bodyEnd = lastIsPartial ? lengthBytes - tailBytes : lengthBytes;
    if (bodyEnd > written) {
      await this.writeData(
        hostOffsetBytes + headBytes + written,
        offsetBytes + written,
        data.subarray(written, bodyEnd),
      );
      written = bodyEnd;
    }
    if (lastIsPartial) {
      const lastOld = olds[clusterCount - 1] as L2Mapping;
      const content = await this.clusterContent(firstCluster + clusterCount - 1, lastOld);
      content.set(data.subarray(written, lengthBytes), 0);
      await this.writeData(
        hostOffsetBytes + (clusterCount - 1) * clusterSizeBytes,
        (firstCluster + clusterCount - 1) * clusterSizeBytes,
        content,
      );
    }
    // Every entry of the run in one table visit (the table is fetched again: the awaits above may
    // have evicted it), and one dirty mark.
    const l2Table = this.image.l2Cache.peek(l2OffsetBytes) ?? (await this.image.l2Cache.get(l2OffsetBytes));
    for (let index = 0; index < clusterCount; index++) {
      this.image.entryNormal(hostOffsetBytes + index * clusterSizeBytes)(l2Table, l2Index + index);
      this.image.releaseMapping(olds[index] as L2Mapping);
    }
    this.image.l2Cache.markDirty(l2OffsetBytes);
    this.lastDecompressed = undefined;
    return lengthBytes;
  }

  private checkHostOffset(hostOffsetBytes: number, l2OffsetBytes: number, l2Index: number): void {
    if (hostOffsetBytes < this.clusterSizeBytes && !this.image.hasDataFile) {
      throw this.image.corrupt(
        `data cluster at ${hostOffsetBytes} overlaps the header`,
        l2OffsetBytes + l2Index * 8,
        8,
      );
    }
  }

  /** Whether the guest cluster currently reads as all zeros without looking at data. */
  private readsAsZero(mapping: L2Mapping, guestCluster: number): boolean {
    if (mapping.kind === 'zero-plain' || mapping.kind === 'zero-alloc') return true;
    if (mapping.subclusterAllocated !== undefined && mapping.kind !== 'compressed') {
      if (mapping.subclusterAllocated !== 0) return false;
      if (mapping.subclusterZero === ALL_SUBCLUSTERS) return true;
    }
    if (mapping.kind !== 'unallocated') return false;
    return !this.backing || guestCluster * this.clusterSizeBytes >= this.backing.sizeBytes;
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    this.checkWritable();
    await this.lock.run(async () => {
      await this.image.bitmaps?.markDirty(offsetBytes, lengthBytes);
      // A raw data file must read as the guest does on its own.
      if (this.image.dataFile && isDataFileRaw(this.image.header))
        await zeroDataFileRange(this.image.dataFile, offsetBytes, lengthBytes);
      const clusterSizeBytes = this.clusterSizeBytes;
      const end = offsetBytes + lengthBytes;
      let position = offsetBytes;
      while (position < end) {
        const guestCluster = Math.floor(position / clusterSizeBytes);
        const clusterStart = guestCluster * clusterSizeBytes;
        // The image's last cluster may be partial: covering up to the virtual end counts as whole.
        const clusterEnd = Math.min(clusterStart + clusterSizeBytes, this.sizeBytes);
        const pieceEnd = Math.min(end, clusterEnd);
        const whole = position === clusterStart && pieceEnd === clusterEnd;
        if (whole && !this.backing && (options?.mayUnmap || this.image.header.version < 3)) {
          // No L2 table and nothing underneath: the whole range the table would map already reads as zeros.
          const { l2OffsetBytes } = await this.image.lookup(guestCluster);
          const tableEnd = (guestCluster + this.image.clustersLeftInL2(guestCluster)) * clusterSizeBytes;
          if (l2OffsetBytes === 0 && tableEnd <= end) {
            position = tableEnd;
            continue;
          }
        }
        if (whole && (this.image.header.version === 3 || !this.backing)) {
          await this.zeroCluster(guestCluster, options?.mayUnmap ?? false);
        } else {
          const { mapping } = await this.image.lookup(guestCluster);
          if (!this.readsAsZero(mapping, guestCluster)) {
            if (options?.fastOnly)
              throw new UnsupportedError({
                format: 'qcow2',
                feature: 'fast zero',
                message: `${this.image.path}: zeroing part of a cluster needs a write`,
              });
            await this.writeBytes(position, new Uint8Array(pieceEnd - position));
          }
        }
        position = pieceEnd;
      }
      if (options?.fua) await this.image.flush();
    });
  }

  /** Makes one whole guest cluster read as zeros: a zero flag (v3) or, on v2 without backing, unallocated. */
  private async zeroCluster(guestCluster: number, mayUnmap: boolean): Promise<void> {
    const { mapping } = await this.image.lookup(guestCluster);
    if (this.image.header.version < 3) {
      if (mapping.kind === 'unallocated') return;
      const l2OffsetBytes = await this.image.writableL2(guestCluster);
      await this.image.setL2Entry(
        l2OffsetBytes,
        guestCluster % this.image.l2EntryCount,
        this.image.entryUnallocated(),
      );
      this.image.releaseMapping(mapping);
      return;
    }
    const unmap =
      mapping.kind === 'compressed' ||
      (mayUnmap && (mapping.kind === 'normal' || mapping.kind === 'zero-alloc'));
    if (mapping.kind === 'zero-plain' || (mapping.kind === 'zero-alloc' && !unmap)) return;
    const allZeroSubclusters =
      mapping.subclusterAllocated === 0 && mapping.subclusterZero === ALL_SUBCLUSTERS;
    if (allZeroSubclusters && (!unmap || mapping.hostOffsetBytes === 0)) return;
    // Unallocated without a backing file already reads as zeros; with mayUnmap that is as good as a zero flag.
    if (mapping.kind === 'unallocated' && mayUnmap && !this.backing) return;
    const l2OffsetBytes = await this.image.writableL2(guestCluster);
    const l2Index = guestCluster % this.image.l2EntryCount;
    if (unmap || mapping.kind === 'unallocated') {
      await this.image.setL2Entry(l2OffsetBytes, l2Index, this.image.entryZero(0, false));
      if (unmap) this.image.releaseMapping(mapping);
    } else {
      await this.image.setL2Entry(
        l2OffsetBytes,
        l2Index,
        this.image.entryZero(mapping.hostOffsetBytes, mapping.copied),
      );
    }
    this.lastDecompressed = undefined;
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkWritable();
    await this.lock.run(async () => {
      await this.image.bitmaps?.markDirty(offsetBytes, lengthBytes);
      const clusterSizeBytes = this.clusterSizeBytes;
      const firstCluster = Math.ceil(offsetBytes / clusterSizeBytes);
      if (this.image.dataFile && isDataFileRaw(this.image.header)) {
        // Discarded clusters read as zeros, so the raw data file must too (as qemu punches it).
        const zeroEnd = Math.min(
          this.sizeBytes,
          Math.floor((offsetBytes + lengthBytes) / clusterSizeBytes) * clusterSizeBytes,
        );
        await zeroDataFileRange(
          this.image.dataFile,
          firstCluster * clusterSizeBytes,
          zeroEnd - firstCluster * clusterSizeBytes,
        );
      }
      const endOffset = offsetBytes + lengthBytes;
      // The partial last cluster of the image counts as whole when the range reaches the virtual end.
      const endCluster =
        endOffset >= this.sizeBytes
          ? Math.ceil(this.sizeBytes / clusterSizeBytes)
          : Math.floor(endOffset / clusterSizeBytes);
      for (let guestCluster = firstCluster; guestCluster < endCluster; guestCluster++) {
        const { mapping, l2OffsetBytes: existingL2 } = await this.image.lookup(guestCluster);
        if (existingL2 === 0) {
          guestCluster += this.image.clustersLeftInL2(guestCluster) - 1;
          continue;
        }
        const isAllocated =
          mapping.kind === 'normal' || mapping.kind === 'compressed' || mapping.kind === 'zero-alloc';
        if (!isAllocated && (mapping.kind === 'zero-plain' || !this.backing)) continue;
        // With a backing file the discarded range must not expose the backing's bytes: v3 marks it zero.
        const l2OffsetBytes = await this.image.writableL2(guestCluster);
        const l2Index = guestCluster % this.image.l2EntryCount;
        // An external data file keeps its bytes, so (as qemu) the entry says zero rather than unallocated.
        const makeZero =
          this.image.header.version >= 3 && (this.backing !== undefined || this.image.hasDataFile);
        await this.image.setL2Entry(
          l2OffsetBytes,
          l2Index,
          makeZero ? this.image.entryZero(0, false) : this.image.entryUnallocated(),
        );
        this.image.releaseMapping(mapping);
      }
      this.lastDecompressed = undefined;
    });
  }

  /**
   * Per guest cluster, the serial of the newest writeCompressed issued for it and not yet finished.
   * Compression finishes in any order; a call that finds a newer one issued for its cluster by then
   * stores nothing, so the later of two writes to one cluster wins, as it does for plain writes.
   */
  private readonly newestCompressedWrite = new Map<number, number>();
  private compressedWriteSerial = 0;

  /** Writes one whole cluster compressed (qemu's pwrite_compressed); the image's last cluster may be short. */
  writeCompressed?: (offsetBytes: number, data: Uint8Array) => Promise<void> = async (offsetBytes, data) => {
    this.checkWritable();
    const clusterSizeBytes = this.clusterSizeBytes;
    const guestCluster = Math.floor(offsetBytes / clusterSizeBytes);
    const serial = ++this.compressedWriteSerial;
    this.newestCompressedWrite.set(guestCluster, serial);
    try {
      let padded = data;
      if (data.length < clusterSizeBytes) {
        padded = new Uint8Array(clusterSizeBytes);
        padded.set(data);
      }
      // Compress outside the lock so several clusters compress in parallel on the thread pool.
      const compressed = await compressCluster(padded, this.image.header.compressionType);
      // Superseded while compressing. (Handed on, the batches below keep order: each flushes, and
      // queues for the lock, in the turn its clusters arrive.)
      if (this.newestCompressedWrite.get(guestCluster) !== serial) return;
      // Clusters that would not shrink are stored plain, joined with their neighbours of the same batch;
      // the others go with the compressed clusters of their batch.
      if (!compressed) return await this.incompressible.write(offsetBytes, data);
      return await this.compressedBatch.add({ offsetBytes, lengthBytes: data.length, payload: compressed });
    } finally {
      if (this.newestCompressedWrite.get(guestCluster) === serial)
        this.newestCompressedWrite.delete(guestCluster);
    }
  };

  /**
   * Stores a batch of compressed clusters under one lock (writeCompressed): each is mapped and given
   * packed bytes, payloads whose bytes follow on are written together, and only then do the L2
   * entries name them. A guest cluster met twice ends the run first, so its second lookup sees the first.
   */
  private async storeCompressed(clusters: CompressedCluster[]): Promise<void> {
    clusters.sort((a, b) => a.offsetBytes - b.offsetBytes);
    const image = this.image;
    let parts: Buffer[] = [];
    let runStartBytes = 0;
    let runEndBytes = 0;
    let mapped: Array<{
      l2OffsetBytes: number;
      l2Index: number;
      mapping: L2Mapping;
      hostOffsetBytes: number;
      lengthBytes: number;
    }> = [];
    const seen = new Set<number>();
    const finishRun = async (): Promise<void> => {
      if (parts.length > 0)
        await image.file.write(
          runStartBytes,
          parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts),
        );
      for (const entry of mapped) {
        await image.setL2Entry(
          entry.l2OffsetBytes,
          entry.l2Index,
          image.entryCompressed(entry.hostOffsetBytes, entry.lengthBytes),
        );
        image.releaseMapping(entry.mapping);
      }
      parts = [];
      mapped = [];
      seen.clear();
      this.lastDecompressed = undefined;
    };
    for (const { offsetBytes, lengthBytes, payload } of clusters) {
      const guestCluster = Math.floor(offsetBytes / this.clusterSizeBytes);
      if (seen.has(guestCluster)) await finishRun();
      seen.add(guestCluster);
      await image.bitmaps?.markDirty(offsetBytes, lengthBytes);
      const { mapping } = await image.lookup(guestCluster);
      const l2OffsetBytes = await image.writableL2(guestCluster);
      const hostOffsetBytes = await image.refcounts.allocateBytes(payload.length);
      if (parts.length > 0 && hostOffsetBytes !== runEndBytes) {
        await image.file.write(
          runStartBytes,
          parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts),
        );
        parts = [];
      }
      if (parts.length === 0) runStartBytes = hostOffsetBytes;
      parts.push(payload);
      runEndBytes = hostOffsetBytes + payload.length;
      mapped.push({
        l2OffsetBytes,
        l2Index: guestCluster % image.l2EntryCount,
        mapping,
        hostOffsetBytes,
        lengthBytes: payload.length,
      });
    }
    await finishRun();
  }

  /** Grows or (with `shrink`) shrinks the guest size; preallocation other than off is not supported. */
  async resize(
    sizeBytes: number,
    options: { shrink: boolean; preallocation?: string; allowDataLoss?: boolean },
  ): Promise<void> {
    this.checkWritable();
    if (options.preallocation && options.preallocation !== 'off') {
      throw new UnsupportedError({
        format: 'qcow2',
        feature: `resize with preallocation=${options.preallocation}`,
      });
    }
    if (this.image.hasDataFile)
      throw new UnsupportedError({
        format: 'qcow2',
        feature: 'resize with data_file',
        message: `${this.image.path}: resizing an image with an external data file is not supported`,
      });
    if (this.image.bitmaps?.count)
      throw new UnsupportedError({
        format: 'qcow2',
        feature: 'resize with persistent bitmaps',
        message: `${this.image.path}: cannot resize an image with persistent bitmaps (remove them with qemu-img bitmap --remove)`,
      });
    await this.lock.run(async () => {
      // qemu keeps guest sizes in whole sectors.
      const rounded = Math.ceil(sizeBytes / 512) * 512;
      if (rounded > this.sizeBytes) await growImage(this.image, rounded);
      else if (rounded < this.sizeBytes) {
        if (!options.shrink)
          throw new InvalidOptionError({
            option: 'size',
            value: sizeBytes,
            message: `${this.image.path}: use --shrink to shrink the image`,
          });
        await shrinkImage(this.image, rounded, options.allowDataLoss ?? false);
      }
      this.sizeBytes = this.image.header.virtualSizeBytes;
      this.lastDecompressed = undefined;
      await this.image.flush();
    });
  }

  async flush(): Promise<void> {
    if (this.isReadOnly) return;
    await this.lock.run(() => this.image.flush());
  }

  // ---- status ----

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const extents = await this.lock.run(() =>
      collectExtents(this.image, this.backing?.sizeBytes, offsetBytes, lengthBytes),
    );
    // Enciphered clusters are not plain bytes of the file: qemu-img map shows no offset for them.
    if (this.encryption) {
      for (const extent of extents) {
        delete extent.hostOffsetBytes;
        delete extent.hostFile;
      }
    }
    return extents;
  }

  async info(): Promise<ImageInfo> {
    const info = await describeImage(this.image);
    if (this.encryption) {
      info.encrypted = true;
      if (info.formatSpecific) info.formatSpecific.data.encrypt = this.encryption.info;
    }
    return info;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.isView) return;
    try {
      if (!this.isReadOnly)
        await this.lock.run(async () => {
          await this.image.flush();
          await this.image.bitmaps?.store();
        });
    } finally {
      await this.image.file.close();
      await this.image.dataFile?.close();
      if (this.backing) await this.backing.close();
    }
  }
}
