// Reading a qcow2 image from a forward-only stream (stdin): the header, L1 and L2 tables are picked up
// as they pass, and each data cluster goes to the target at its guest offset when it passes. Parts that
// pass before the metadata naming them (an L1 moved to the end, qemu's refcount blocks, ...) are kept in
// a sparse spill file beside the output and served from there once named; in metadata-first order (as
// vdisk's stream writer emits and qemu-img lays out fresh images) nothing is spilled.
// Memory: one window, the L1 table (qemu's 32 MiB cap) and the pending runs (capped, stream-pending.ts).
// Spec: qcow2.txt "Header", "Cluster mapping", "Compressed Clusters Descriptor".

import type { BlockDevice } from '../../block-device.ts';
import { CorruptImageError, ImageFormatError, UnsupportedError } from '../../errors.ts';
import type { ByteSource } from '../../io/byte-stream.ts';
import { type HostFile, NodeHostFile } from '../../io/host-file.ts';
import type { StreamCopyOptions, StreamCopyResult, StreamedImage } from '../driver.ts';
import { ALL_SUBCLUSTERS, decodeL2, l1Offset, SUBCLUSTERS_PER_CLUSTER } from './cluster-map.ts';
import { decompressCluster } from './compress.ts';
import {
  HEADER_FIELD,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  parseHeader,
  QCOW2_MAGIC,
  QCOW2_MAX_CLUSTER_BITS,
  QCOW2_MAX_L1_BYTES,
  QCOW2_MIN_CLUSTER_BITS,
  type Qcow2Header,
} from './header.ts';
import { checkFeatures } from './load.ts';
import {
  MAX_PENDING_RUNS,
  PassedRanges,
  type PendingCompressed,
  PendingHeap,
  type PendingItem,
} from './stream-pending.ts';

/** The stream is read in windows of at least this many bytes (whole clusters). */
const WINDOW_BYTES = 1024 * 1024;

/** Reads the header cluster from the stream and checks that vdisk can convert the image it starts. */
export async function openQcow2Stream(input: ByteSource): Promise<StreamedImage> {
  const name = input.name;
  const first = Buffer.alloc(2 ** QCOW2_MIN_CLUSTER_BITS);
  const firstCount = await input.readInto(first);
  if (firstCount < 72 || first.readUInt32BE(0) !== QCOW2_MAGIC)
    throw new ImageFormatError({
      file: name,
      offsetBytes: 0,
      message: 'the stream does not start with a qcow2 header',
    });
  const clusterBits = first.readUInt32BE(20);
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS || clusterBits > QCOW2_MAX_CLUSTER_BITS)
    throw new ImageFormatError({
      file: name,
      offsetBytes: 20,
      message: `cluster_bits ${clusterBits} outside ${QCOW2_MIN_CLUSTER_BITS}..${QCOW2_MAX_CLUSTER_BITS}`,
    });
  const headerCluster = Buffer.alloc(2 ** clusterBits);
  first.copy(headerCluster, 0, 0, firstCount);
  const restCount =
    firstCount < first.length ? 0 : await input.readInto(headerCluster.subarray(first.length));
  const header = parseHeader(headerCluster.subarray(0, firstCount + restCount), name);
  checkFeatures(header, name);
  if (header.backingFileName !== undefined && header.backingFileName !== '')
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'streamed backing file',
      message: `${name}: a qcow2 image read from a stream cannot have a backing file ('${header.backingFileName}')`,
    });
  if (header.cryptMethod !== 0)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'streamed encryption',
      message: `${name}: an encrypted qcow2 image cannot be read from a stream (convert it from a file)`,
    });
  if (header.incompatibleFeatures & INCOMPAT_DATA_FILE)
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'streamed data_file',
      message: `${name}: a qcow2 image read from a stream cannot have an external data file`,
    });
  const l1Bytes = header.l1EntryCount * 8;
  if (l1Bytes > QCOW2_MAX_L1_BYTES)
    throw new ImageFormatError({
      file: name,
      offsetBytes: HEADER_FIELD.l1Size,
      message: `L1 table of ${header.l1EntryCount} entries is larger than ${QCOW2_MAX_L1_BYTES} bytes`,
    });
  const clusterSizeBytes = 2 ** clusterBits;
  const entryBytes = header.incompatibleFeatures & INCOMPAT_EXTL2 ? 16 : 8;
  const neededL1 = Math.ceil(header.virtualSizeBytes / clusterSizeBytes / (clusterSizeBytes / entryBytes));
  if (header.l1EntryCount < neededL1)
    throw new ImageFormatError({
      file: name,
      offsetBytes: HEADER_FIELD.l1Size,
      message: `L1 table of ${header.l1EntryCount} entries is too small for ${header.virtualSizeBytes} bytes (needs ${neededL1})`,
    });
  if (l1Bytes > 0 && (header.l1TableOffsetBytes % clusterSizeBytes !== 0 || header.l1TableOffsetBytes === 0))
    throw new ImageFormatError({
      file: name,
      offsetBytes: HEADER_FIELD.l1TableOffset,
      message: `L1 table offset ${header.l1TableOffsetBytes} is not cluster aligned or overlaps the header`,
    });
  return {
    sizeBytes: header.virtualSizeBytes,
    copyInto: (target, options) => new StreamCopy(input, header, target, options).copy(),
  };
}

/** One in-flight compressed cluster whose bytes are still arriving. */
interface Gathering {
  item: PendingCompressed;
  payload: Buffer;
}

class StreamCopy {
  private readonly input: ByteSource;
  private readonly header: Qcow2Header;
  private readonly target: BlockDevice;
  private readonly options: StreamCopyOptions;
  private readonly clusterSizeBytes: number;
  private readonly l1: Buffer;
  private l1Seen = 0;
  /** L2 tables named by the L1 and not yet passed: host offset -> the L1 index naming it. */
  private readonly pendingTables = new Map<number, number>();
  private readonly pending = new PendingHeap();
  private readonly passed = new PassedRanges();
  private gathering: Gathering[] = [];
  /** Host offset of the first byte not yet passed. */
  private passedEnd: number;
  /** Length of the stream once its end was seen. */
  private streamEndBytes = Number.POSITIVE_INFINITY;
  private spill: HostFile | undefined;
  private spilledBytes = 0;
  /** The next target write, grown while guest and window stay contiguous. */
  private nextWrite: { guestOffsetBytes: number; window: Buffer; start: number; end: number } | undefined;

  constructor(input: ByteSource, header: Qcow2Header, target: BlockDevice, options: StreamCopyOptions) {
    this.input = input;
    this.header = header;
    this.target = target;
    this.options = options;
    this.clusterSizeBytes = 2 ** header.clusterBits;
    this.l1 = Buffer.alloc(header.l1EntryCount * 8);
    this.passedEnd = this.clusterSizeBytes;
    this.passed.add(0, this.clusterSizeBytes);
  }

  private corrupt(message: string, offsetBytes?: number, lengthBytes?: number): CorruptImageError {
    return new CorruptImageError({ file: this.input.name, offsetBytes, lengthBytes, message, fatal: true });
  }

  async copy(): Promise<StreamCopyResult> {
    try {
      const windowBytes = Math.max(this.clusterSizeBytes, WINDOW_BYTES);
      const window = Buffer.alloc(windowBytes);
      for (;;) {
        const count = await this.input.readInto(window);
        if (count === 0) break;
        // A short final window: the image's last cluster may be cut short (qemu writes exactly the
        // L1 bytes at the end of a fresh image); a table or data cluster cut short is an error.
        if (count < window.length) {
          window.fill(0, count);
          this.streamEndBytes = this.passedEnd + count;
        }
        const clusters = Math.ceil(count / this.clusterSizeBytes);
        for (let index = 0; index < clusters; index++) {
          await this.passCluster(window, index * this.clusterSizeBytes);
        }
        await this.flushRun();
        this.options.onProgress?.(this.input.positionBytes);
        if (count < window.length) break;
      }
      await this.finishAtEnd();
      await this.target.flush();
      return { sizeBytes: this.header.virtualSizeBytes, spilledBytes: this.spilledBytes };
    } finally {
      if (this.spill) {
        await this.spill.close().catch(() => undefined);
        const { rm } = await import('node:fs/promises');
        await rm(this.options.spillPath, { force: true });
      }
    }
  }

  /** Handles the cluster at `window[at]`, whose host offset is `passedEnd`. */
  private async passCluster(window: Buffer, at: number): Promise<void> {
    const cs = this.clusterSizeBytes;
    const hostOffsetBytes = this.passedEnd;
    const cluster = window.subarray(at, at + cs);
    this.passedEnd += cs;
    let known = this.passRefcountStructure(cluster, hostOffsetBytes);
    const l1Start = this.header.l1TableOffsetBytes;
    if (this.l1.length > 0 && hostOffsetBytes < l1Start + this.l1.length && hostOffsetBytes + cs > l1Start) {
      const from = Math.max(l1Start, hostOffsetBytes);
      const to = Math.min(l1Start + this.l1.length, hostOffsetBytes + cs, this.streamEndBytes);
      if (to > from) {
        cluster.copy(this.l1, from - l1Start, from - hostOffsetBytes, to - hostOffsetBytes);
        this.l1Seen += to - from;
      }
      known = true;
      this.passed.add(hostOffsetBytes, hostOffsetBytes + cs);
      if (this.l1Seen === this.l1.length) await this.takeL1();
    }
    const tableL1Index = this.pendingTables.get(hostOffsetBytes);
    const cutShort = hostOffsetBytes + cs > this.streamEndBytes;
    if (tableL1Index !== undefined) {
      if (cutShort)
        throw this.corrupt(
          `L2 table at ${hostOffsetBytes} lies past the end of the stream`,
          hostOffsetBytes,
          cs,
        );
      this.pendingTables.delete(hostOffsetBytes);
      if (known) throw this.corrupt('an L2 table overlaps the L1 table', hostOffsetBytes, cs);
      known = true;
      this.passed.add(hostOffsetBytes, hostOffsetBytes + cs);
      await this.takeL2(Buffer.from(cluster), hostOffsetBytes, tableL1Index);
    }
    const covered: Array<[number, number]> = [];
    let usedByData = false;
    for (
      let top = this.pending.peek();
      top && top.hostOffsetBytes < hostOffsetBytes + cs;
      top = this.pending.peek()
    ) {
      this.pending.pop();
      if (top.kind === 'data') {
        if (cutShort)
          throw this.corrupt(
            `data cluster at ${hostOffsetBytes} lies past the end of the stream`,
            hostOffsetBytes,
            cs,
          );
        if (known || usedByData)
          throw this.corrupt(
            `host cluster at ${hostOffsetBytes} is used twice (data and metadata, or by two L2 entries)`,
            hostOffsetBytes,
            cs,
          );
        usedByData = true;
        if (top.subclusterAllocated === undefined) this.queueWrite(top.guestOffsetBytes, window, at, at + cs);
        else
          for (const [start, end] of this.subclusterRanges(top.subclusterAllocated))
            this.queueWrite(top.guestOffsetBytes + start, window, at + start, at + end);
        if (top.lengthBytes > cs)
          this.pending.push({
            kind: 'data',
            hostOffsetBytes: top.hostOffsetBytes + cs,
            guestOffsetBytes: top.guestOffsetBytes + cs,
            lengthBytes: top.lengthBytes - cs,
          });
      } else {
        this.gathering.push({ item: top, payload: Buffer.alloc(top.lengthBytes) });
      }
    }
    if (this.gathering.length > 0) {
      const stillGathering: Gathering[] = [];
      for (const entry of this.gathering) {
        const { item } = entry;
        const from = Math.max(item.hostOffsetBytes, hostOffsetBytes);
        const to = Math.min(item.hostOffsetBytes + item.lengthBytes, hostOffsetBytes + cs);
        if (to > from) {
          cluster.copy(
            entry.payload,
            from - item.hostOffsetBytes,
            from - hostOffsetBytes,
            to - hostOffsetBytes,
          );
          // The descriptor counts whole sectors, so the last 512 bytes may hold the start of the next
          // payload (qemu packs them byte-tight): only what lies before them is surely this item's.
          const surelyOwnEnd = Math.min(to, item.hostOffsetBytes + item.lengthBytes - 512);
          if (surelyOwnEnd > from) covered.push([from - hostOffsetBytes, surelyOwnEnd - hostOffsetBytes]);
        }
        if (item.hostOffsetBytes + item.lengthBytes <= hostOffsetBytes + cs)
          await this.writeCompressed(entry);
        else stillGathering.push(entry);
      }
      this.gathering = stillGathering;
    }
    if (usedByData) this.passed.add(hostOffsetBytes, hostOffsetBytes + cs);
    if (known || usedByData) return;
    // Unknown, or only partly explained by compressed payloads (qemu packs them byte-tight, so a payload
    // named by a later L2 table may share this cluster): keep it if any byte outside them is not zero.
    if (hasUncoveredData(cluster, covered)) await this.spillCluster(hostOffsetBytes, cluster);
  }

  /**
   * Refcounts are not needed to convert, but their clusters are recognised (the table from the header,
   * the blocks from the table) so they are not kept in the spill file as possibly-named data.
   */
  private passRefcountStructure(cluster: Buffer, hostOffsetBytes: number): boolean {
    const tableStart = this.header.refcountTableOffsetBytes;
    const tableEnd = tableStart + this.header.refcountTableClusters * this.clusterSizeBytes;
    if (hostOffsetBytes >= tableStart && hostOffsetBytes < tableEnd) {
      for (let at = 0; at + 8 <= cluster.length; at += 8) {
        const blockOffsetBytes = l1Offset(cluster, at / 8);
        if (blockOffsetBytes >= this.passedEnd && this.refcountBlocks.size < MAX_PENDING_RUNS)
          this.refcountBlocks.add(blockOffsetBytes);
      }
      this.passed.add(hostOffsetBytes, hostOffsetBytes + this.clusterSizeBytes);
      return true;
    }
    if (!this.refcountBlocks.delete(hostOffsetBytes)) return false;
    this.passed.add(hostOffsetBytes, hostOffsetBytes + this.clusterSizeBytes);
    return true;
  }

  /** Refcount blocks named by the refcount table and not yet passed. */
  private readonly refcountBlocks = new Set<number>();

  private async takeL1(): Promise<void> {
    for (let l1Index = 0; l1Index < this.header.l1EntryCount; l1Index++) {
      const tableOffsetBytes = l1Offset(this.l1, l1Index);
      if (tableOffsetBytes === 0) continue;
      if (tableOffsetBytes % this.clusterSizeBytes !== 0 || tableOffsetBytes < this.clusterSizeBytes)
        throw this.corrupt(
          `L2 table offset ${tableOffsetBytes} of L1 entry ${l1Index} is not cluster aligned or overlaps the header`,
          this.header.l1TableOffsetBytes + l1Index * 8,
          8,
        );
      const entryOffsetBytes = this.header.l1TableOffsetBytes + l1Index * 8;
      if (tableOffsetBytes < this.passedEnd) {
        if (this.passed.overlaps(tableOffsetBytes, tableOffsetBytes + this.clusterSizeBytes))
          throw this.corrupt(`L2 table at ${tableOffsetBytes} overlaps other metadata`, entryOffsetBytes, 8);
        this.passed.add(tableOffsetBytes, tableOffsetBytes + this.clusterSizeBytes);
        const table = await this.readPassed(tableOffsetBytes, this.clusterSizeBytes);
        await this.takeL2(table, tableOffsetBytes, l1Index);
        continue;
      }
      if (this.pendingTables.has(tableOffsetBytes))
        throw this.corrupt(`L2 table at ${tableOffsetBytes} is named by two L1 entries`, entryOffsetBytes, 8);
      this.pendingTables.set(tableOffsetBytes, l1Index);
    }
  }

  /** Queues (or, when already passed, copies) every data cluster the L2 table of `l1Index` names. */
  private async takeL2(table: Buffer, tableOffsetBytes: number, l1Index: number): Promise<void> {
    const cs = this.clusterSizeBytes;
    const extended = (this.header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    const entryBytes = extended ? 16 : 8;
    const entryCount = cs / entryBytes;
    const firstGuest = l1Index * entryCount * cs;
    let runItem: PendingItem | undefined;
    const pushRun = (): void => {
      if (runItem) this.pending.push(runItem);
      runItem = undefined;
    };
    for (let index = 0; index < entryCount; index++) {
      const guestOffsetBytes = firstGuest + index * cs;
      if (guestOffsetBytes >= this.header.virtualSizeBytes) break;
      const mapping = decodeL2(table, index, this.header.clusterBits, extended);
      const entryOffsetBytes = tableOffsetBytes + index * entryBytes;
      // Extended L2: only the allocated subclusters hold data; a cluster with none is skipped.
      const partial =
        mapping.subclusterAllocated !== undefined && mapping.subclusterAllocated >>> 0 !== ALL_SUBCLUSTERS
          ? mapping.subclusterAllocated >>> 0
          : undefined;
      if (mapping.kind === 'normal' && partial === 0) continue;
      if (mapping.kind === 'compressed') {
        const item: PendingCompressed = {
          kind: 'compressed',
          hostOffsetBytes: mapping.hostOffsetBytes,
          lengthBytes: mapping.compressedSizeBytes,
          guestOffsetBytes,
        };
        if (item.hostOffsetBytes < this.passedEnd) await this.takeLateCompressed(item);
        else this.pending.push(item);
        continue;
      }
      if (mapping.kind !== 'normal') continue;
      if (mapping.hostOffsetBytes % cs !== 0 || mapping.hostOffsetBytes < cs)
        throw this.corrupt(
          `data cluster offset ${mapping.hostOffsetBytes} is not cluster aligned or overlaps the header`,
          entryOffsetBytes,
          8,
        );
      if (mapping.hostOffsetBytes < this.passedEnd) {
        if (this.passed.overlaps(mapping.hostOffsetBytes, mapping.hostOffsetBytes + cs))
          throw this.corrupt(
            `data cluster at ${mapping.hostOffsetBytes} was already used by other metadata or data when its L2 entry arrived`,
            entryOffsetBytes,
            8,
          );
        this.passed.add(mapping.hostOffsetBytes, mapping.hostOffsetBytes + cs);
        const data = await this.readPassed(mapping.hostOffsetBytes, cs);
        if (partial === undefined) await this.writeGuest(guestOffsetBytes, data);
        else
          for (const [start, end] of this.subclusterRanges(partial))
            await this.writeGuest(guestOffsetBytes + start, data.subarray(start, end));
        continue;
      }
      if (partial !== undefined) {
        pushRun();
        this.pending.push({
          kind: 'data',
          hostOffsetBytes: mapping.hostOffsetBytes,
          guestOffsetBytes,
          lengthBytes: cs,
          subclusterAllocated: partial,
        });
        continue;
      }
      if (
        runItem?.kind === 'data' &&
        runItem.hostOffsetBytes + runItem.lengthBytes === mapping.hostOffsetBytes &&
        runItem.guestOffsetBytes + runItem.lengthBytes === guestOffsetBytes
      ) {
        runItem.lengthBytes += cs;
        continue;
      }
      pushRun();
      runItem = { kind: 'data', hostOffsetBytes: mapping.hostOffsetBytes, guestOffsetBytes, lengthBytes: cs };
    }
    pushRun();
  }

  /** Byte ranges [start, end) within a cluster of the runs of set bits in an extended L2 allocation bitmap. */
  private subclusterRanges(mask: number): Array<[number, number]> {
    const subclusterBytes = this.clusterSizeBytes / SUBCLUSTERS_PER_CLUSTER;
    const ranges: Array<[number, number]> = [];
    for (let bit = 0; bit < SUBCLUSTERS_PER_CLUSTER; ) {
      if (((mask >>> bit) & 1) === 0) {
        bit++;
        continue;
      }
      const first = bit;
      while (bit < SUBCLUSTERS_PER_CLUSTER && ((mask >>> bit) & 1) === 1) bit++;
      ranges.push([first * subclusterBytes, bit * subclusterBytes]);
    }
    return ranges;
  }

  /** A compressed cluster whose bytes started before the stream position: the passed part comes from the spill. */
  private async takeLateCompressed(item: PendingCompressed): Promise<void> {
    const passedBytes = Math.min(item.lengthBytes, this.passedEnd - item.hostOffsetBytes);
    const payload = Buffer.alloc(item.lengthBytes);
    (await this.readPassed(item.hostOffsetBytes, passedBytes)).copy(payload);
    const entry = { item, payload };
    if (passedBytes === item.lengthBytes) await this.writeCompressed(entry);
    else this.gathering.push(entry);
  }

  private async writeCompressed(entry: Gathering): Promise<void> {
    const data = await decompressCluster(entry.payload, this.clusterSizeBytes, this.header.compressionType);
    if (!data)
      throw this.corrupt(
        'compressed cluster does not decompress to one cluster',
        entry.item.hostOffsetBytes,
        entry.item.lengthBytes,
      );
    await this.writeGuest(entry.item.guestOffsetBytes, data);
  }

  /** Adds window[start, end) at `guestOffsetBytes` to the pending target write, flushing when not contiguous. */
  private queueWrite(guestOffsetBytes: number, window: Buffer, start: number, end: number): void {
    const run = this.nextWrite;
    if (
      run &&
      run.window === window &&
      run.end === start &&
      run.guestOffsetBytes + (run.end - run.start) === guestOffsetBytes
    ) {
      run.end = end;
      return;
    }
    if (run) {
      // Not contiguous: the earlier run is written before the window is reused (flushRun at window end),
      // so keep a list instead of writing synchronously here.
      this.queued.push(run);
    }
    this.nextWrite = { guestOffsetBytes, window, start, end };
  }

  private queued: Array<{ guestOffsetBytes: number; window: Buffer; start: number; end: number }> = [];

  private async flushRun(): Promise<void> {
    const runs = this.nextWrite ? [...this.queued, this.nextWrite] : this.queued;
    this.queued = [];
    this.nextWrite = undefined;
    for (const run of runs)
      await this.writeGuest(run.guestOffsetBytes, run.window.subarray(run.start, run.end));
  }

  /** Writes guest data, clipped to the virtual size; all-zero data is skipped (the target reads as zeros). */
  private async writeGuest(guestOffsetBytes: number, data: Buffer): Promise<void> {
    const lengthBytes = Math.min(data.length, this.header.virtualSizeBytes - guestOffsetBytes);
    if (lengthBytes <= 0) return;
    const piece = data.subarray(0, lengthBytes);
    if (isZero(piece)) return;
    await this.target.write(guestOffsetBytes, piece);
  }

  private async spillCluster(hostOffsetBytes: number, cluster: Buffer): Promise<void> {
    this.spill ??= await NodeHostFile.open(this.options.spillPath, {
      readOnly: false,
      create: true,
      truncate: true,
    });
    await this.spill.write(hostOffsetBytes, cluster);
    this.spilledBytes += cluster.length;
  }

  /** Bytes of a passed range: from the spill file where they were kept, zeros where nothing was. */
  private async readPassed(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const buffer = Buffer.alloc(lengthBytes);
    if (this.spill) await this.spill.read(offsetBytes, buffer);
    return buffer;
  }

  /** At the end of the stream nothing named may still be missing: a stream cut short fails, never reads as zeros. */
  private async finishAtEnd(): Promise<void> {
    await this.flushRun();
    if (this.l1Seen < this.l1.length)
      throw this.corrupt(
        `the L1 table lies past the end of the stream (${this.passedEnd} bytes)`,
        this.header.l1TableOffsetBytes,
        this.l1.length,
      );
    const [missingTable] = this.pendingTables.keys();
    if (missingTable !== undefined)
      throw this.corrupt(
        `L2 table at ${missingTable} lies past the end of the stream`,
        missingTable,
        this.clusterSizeBytes,
      );
    const missingData = this.pending.peek();
    if (missingData)
      throw this.corrupt(
        `${missingData.kind} cluster at ${missingData.hostOffsetBytes} lies past the end of the stream`,
        missingData.hostOffsetBytes,
        missingData.lengthBytes,
      );
    for (const entry of this.gathering)
      throw this.corrupt(
        'compressed cluster runs past the end of the stream',
        entry.item.hostOffsetBytes,
        entry.item.lengthBytes,
      );
  }
}

/** Whether `cluster` has a non-zero byte outside the `covered` [start, end) ranges. */
function hasUncoveredData(cluster: Buffer, covered: Array<[number, number]>): boolean {
  covered.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [start, end] of covered) {
    if (start > at && !isZero(cluster.subarray(at, start))) return true;
    at = Math.max(at, end);
  }
  return at < cluster.length && !isZero(cluster.subarray(at));
}

function isZero(buffer: Buffer): boolean {
  for (let at = 0; at < buffer.length; at += ZEROS.length) {
    const length = Math.min(ZEROS.length, buffer.length - at);
    if (buffer.compare(ZEROS, 0, length, at, at + length) !== 0) return false;
  }
  return true;
}

const ZEROS = Buffer.alloc(64 * 1024);
