// The guest view of a VMDK: its extents (FLAT / ZERO / sparse) laid end to end, reads falling through
// unallocated grains to the parent, allocating writes (grain appended, data before the grain table),
// write-once compressed grains for stream-optimized extents, block status and qemu's info fields.

import type { BlockDevice, Extent, ImageInfo, WriteOptions, WriteZeroesOptions } from '../../block-device.ts';
import { PermissionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { actualSizeOf } from '../common/binary.ts';
import {
  appendExtent,
  COPY_CHUNK_BYTES,
  isAllZero,
  readFromBacking,
  readHostZeroFilled,
} from '../common/mapped-device.ts';
import { WriteLock } from '../common/write-lock.ts';
import type { CheckIssue } from '../driver.ts';
import type { Descriptor } from './descriptor.ts';
import { growVmdk } from './resize.ts';
import type { SeSparseExtent } from './sesparse-extent.ts';
import type { CompressedGrainRead, GrainMapping, SparseExtent } from './sparse-extent.ts';

/** Smallest run block status reports for a FLAT file (guards against a zero-length SEEK answer). */
const SECTOR_ALIGN = 512;
/** Most bytes one batched allocation appends (bounds the lookups done under the write lock). */
const MAX_BATCH_BYTES = 32 * 1024 * 1024;
const ZEROS = new Uint8Array(COPY_CHUNK_BYTES);
/** Most compressed grains one read takes together (bounds its one pread: ~200 KiB a grain at worst). */
const MAX_READ_GRAINS = 64;

/** qemu's refusal to write a stream-optimized grain a second time. */
function rewriteRefused(extent: OpenedExtent): UnsupportedError {
  return new UnsupportedError({
    format: 'vmdk',
    feature: 'rewriting a compressed grain',
    message: `${extent.path}: Could not write to allocated cluster for streamOptimized`,
  });
}

export interface OpenedExtent {
  kind: 'flat' | 'zero' | 'sparse' | 'sesparse';
  /** Guest offset where the extent starts. */
  startBytes: number;
  sizeBytes: number;
  /** qemu's extent "format" in info: the descriptor's type, '' for a sparse file opened directly. */
  typeName: string;
  path: string;
  file: HostFile | undefined;
  flatOffsetBytes: number;
  sparse: SparseExtent | undefined;
  /** Set for 'sesparse' extents (read-only). */
  seSparse?: SeSparseExtent;
  isReadOnly: boolean;
}

type Piece =
  /** `isHole`: a hole of a sparse FLAT file (reads as zeros; only block status asks). */
  | {
      kind: 'data';
      lengthBytes: number;
      file: HostFile;
      path: string;
      hostOffsetBytes: number;
      isHole?: boolean;
    }
  | { kind: 'zero'; lengthBytes: number }
  | { kind: 'unallocated'; lengthBytes: number }
  | {
      kind: 'compressed';
      lengthBytes: number;
      extent: OpenedExtent;
      mapping: GrainMapping & { kind: 'compressed' };
    };

export interface VmdkDeviceInit {
  path: string;
  descriptor: Descriptor;
  extents: OpenedExtent[];
  isReadOnly: boolean;
  backing: BlockDevice | undefined;
  /** Files owned by the device besides the extents' (the descriptor file), closed with it. */
  otherFiles: HostFile[];
}

export class VmdkDevice implements BlockDevice {
  readonly formatName = 'vmdk';
  readonly preferredBlockSizeBytes = 512;
  sizeBytes: number;
  readonly isReadOnly: boolean;
  readonly backing: BlockDevice | undefined;
  readonly path: string;
  readonly descriptor: Descriptor;
  readonly extents: OpenedExtent[];
  readonly compressedWriteUnitBytes?: number;
  /** Files besides the extents' (the descriptor file), closed with the device. */
  readonly otherFiles: HostFile[];
  private closed = false;
  /** Serializes writes: two writes finding one grain unallocated must not both append it. */
  readonly writeLock = new WriteLock();

  constructor(init: VmdkDeviceInit) {
    this.path = init.path;
    this.descriptor = init.descriptor;
    this.extents = init.extents;
    this.isReadOnly = init.isReadOnly;
    this.backing = init.backing;
    this.otherFiles = init.otherFiles;
    const last = init.extents[init.extents.length - 1];
    this.sizeBytes = last ? last.startBytes + last.sizeBytes : 0;
    const compressed = init.extents.find((extent) => extent.sparse?.isCompressed);
    if (compressed?.sparse) this.compressedWriteUnitBytes = compressed.sparse.grainBytes;
  }

  private extentAt(offsetBytes: number): OpenedExtent {
    let low = 0;
    let high = this.extents.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.extents[middle]!.startBytes <= offsetBytes) low = middle;
      else high = middle - 1;
    }
    return this.extents[low]!;
  }

  /**
   * What backs the bytes at `offsetBytes`. Writers get at most one grain (they allocate grain by grain);
   * readers pass `joinRuns` and get whole runs of alike grains, so one pread covers a contiguous run.
   */
  private async pieceAt(
    offsetBytes: number,
    maxLengthBytes: number,
    withHoles = false,
    joinRuns = false,
  ): Promise<Piece> {
    const extent = this.extentAt(offsetBytes);
    const inExtentBytes = offsetBytes - extent.startBytes;
    const lengthBytes = Math.min(maxLengthBytes, extent.sizeBytes - inExtentBytes);
    if (extent.kind === 'zero') return { kind: 'zero', lengthBytes };
    if (extent.kind === 'flat') {
      const file = extent.file!;
      const hostOffsetBytes = extent.flatOffsetBytes + inExtentBytes;
      if (withHoles && file.seekData && file.seekHole) {
        // As qemu maps a FLAT extent: the file's holes read as zeros, its data runs as data.
        const dataAt = await file.seekData(hostOffsetBytes);
        if (dataAt === null || dataAt > hostOffsetBytes) {
          const holeBytes = dataAt === null ? lengthBytes : Math.min(lengthBytes, dataAt - hostOffsetBytes);
          return {
            kind: 'data',
            lengthBytes: holeBytes,
            file,
            path: extent.path,
            hostOffsetBytes,
            isHole: true,
          };
        }
        const holeAt = await file.seekHole(hostOffsetBytes);
        const dataBytes = Math.min(lengthBytes, Math.max(SECTOR_ALIGN, holeAt - hostOffsetBytes));
        return { kind: 'data', lengthBytes: dataBytes, file, path: extent.path, hostOffsetBytes };
      }
      return { kind: 'data', lengthBytes, file, path: extent.path, hostOffsetBytes };
    }
    const mapping = extent.seSparse
      ? await extent.seSparse.lookup(inExtentBytes, lengthBytes)
      : await extent.sparse!.lookup(inExtentBytes, lengthBytes, joinRuns);
    if (mapping.kind === 'data') {
      return {
        kind: 'data',
        lengthBytes: mapping.lengthBytes,
        file: extent.file!,
        path: extent.path,
        hostOffsetBytes: mapping.hostOffsetBytes,
      };
    }
    if (mapping.kind === 'compressed')
      return { kind: 'compressed', lengthBytes: mapping.lengthBytes, extent, mapping };
    return { kind: mapping.kind, lengthBytes: mapping.lengthBytes };
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const piece = await this.pieceAt(offsetBytes + done, buffer.length - done, false, true);
      const part = buffer.subarray(done, done + piece.lengthBytes);
      if (piece.kind === 'data') {
        await readHostZeroFilled(piece.file, piece.hostOffsetBytes, part);
      } else if (piece.kind === 'zero') {
        part.fill(0);
      } else if (piece.kind === 'compressed') {
        done += await this.readCompressedRun(offsetBytes + done, buffer.subarray(done), piece);
        continue;
      } else {
        await readFromBacking(this.backing, offsetBytes + done, part);
      }
      done += piece.lengthBytes;
    }
  }

  /**
   * Reads the compressed grain `first` starts in and the compressed grains of its extent that follow it
   * inside `buffer` (at most MAX_READ_GRAINS), which the extent reads together. Returns the bytes filled.
   */
  private async readCompressedRun(
    offsetBytes: number,
    buffer: Uint8Array,
    first: Piece & { kind: 'compressed' },
  ): Promise<number> {
    const grains: CompressedGrainRead[] = [];
    let piece: Piece = first;
    let done = 0;
    while (piece.kind === 'compressed' && piece.extent === first.extent) {
      grains.push({
        grainHostOffsetBytes: piece.mapping.grainHostOffsetBytes,
        offsetInGrainBytes: piece.mapping.offsetInGrainBytes,
        target: buffer.subarray(done, done + piece.lengthBytes),
      });
      done += piece.lengthBytes;
      if (done >= buffer.length || grains.length >= MAX_READ_GRAINS) break;
      piece = await this.pieceAt(offsetBytes + done, buffer.length - done);
    }
    await first.extent.sparse!.readCompressedGrains(grains);
    return done;
  }

  private requireWritable(extent: OpenedExtent): void {
    if (this.isReadOnly)
      throw new PermissionError({ file: this.path, message: 'write refused: the image is open read-only' });
    if (extent.isReadOnly)
      throw new PermissionError({
        file: extent.path,
        message: 'write refused: the extent is RDONLY in the descriptor',
      });
  }

  write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.writeLock.run(() => this.writeUnlocked(offsetBytes, data, options));
  }

  private async writeUnlocked(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const at = offsetBytes + done;
      const extent = this.extentAt(at);
      this.requireWritable(extent);
      const piece = await this.pieceAt(at, data.length - done);
      const batchBytes =
        piece.kind === 'unallocated' ? await this.writeWholeGrains(extent, at, data.subarray(done)) : 0;
      if (batchBytes > 0) {
        done += batchBytes;
        continue;
      }
      const part = data.subarray(done, done + piece.lengthBytes);
      if (piece.kind === 'data') await piece.file.write(piece.hostOffsetBytes, part);
      else if (extent.kind === 'zero')
        throw new UnsupportedError({ format: 'vmdk', feature: 'writing to a ZERO extent' });
      else await this.writeGrain(extent, at, part, piece);
      done += piece.lengthBytes;
    }
    if (options?.fua) await this.flush();
  }

  /**
   * Fast path for sequential writes (convert): the whole unallocated grains `data` covers from the
   * grain-aligned `offsetBytes` are appended as one run, written once, then committed table by table.
   * Returns the bytes consumed (0 when the head is not a whole unallocated grain of a plain sparse extent).
   */
  private async writeWholeGrains(
    extent: OpenedExtent,
    offsetBytes: number,
    data: Uint8Array,
  ): Promise<number> {
    const sparse = extent.sparse;
    if (!sparse) return 0;
    const inExtentBytes = offsetBytes - extent.startBytes;
    if (inExtentBytes % sparse.grainBytes !== 0) return 0;
    const firstGrain = inExtentBytes / sparse.grainBytes;
    const limitBytes = Math.min(data.length, extent.sizeBytes - inExtentBytes, MAX_BATCH_BYTES);
    let count = 0;
    while ((count + 1) * sparse.grainBytes <= limitBytes && sparse.canAllocate(firstGrain + count)) {
      const mapping = await sparse.lookup((firstGrain + count) * sparse.grainBytes, sparse.grainBytes);
      if (mapping.kind !== 'unallocated') break;
      count++;
    }
    if (count === 0) return 0;
    if (sparse.isCompressed) {
      // Whole grains need nothing from the parent: they are deflated together and appended at once.
      const grains = Array.from({ length: count }, (_, index) =>
        data.subarray(index * sparse.grainBytes, (index + 1) * sparse.grainBytes),
      );
      await sparse.writeCompressedGrains(firstGrain, grains);
      return count * sparse.grainBytes;
    }
    const hostOffsetBytes = await sparse.reserveGrains(count);
    await extent.file!.write(hostOffsetBytes, data.subarray(0, count * sparse.grainBytes));
    await sparse.commitGrains(firstGrain, hostOffsetBytes, count);
    return count * sparse.grainBytes;
  }

  /** Writes `part` (inside one grain) into an unallocated, zeroed or compressed grain. */
  private async writeGrain(
    extent: OpenedExtent,
    offsetBytes: number,
    part: Uint8Array,
    piece: Piece,
  ): Promise<void> {
    const sparse = extent.sparse!;
    const inExtentBytes = offsetBytes - extent.startBytes;
    const grainIndex = Math.floor(inExtentBytes / sparse.grainBytes);
    const grainGuestBytes = extent.startBytes + grainIndex * sparse.grainBytes;
    const grainLengthBytes = Math.min(
      sparse.grainBytes,
      extent.startBytes + extent.sizeBytes - grainGuestBytes,
    );
    if (sparse.isCompressed) {
      if (piece.kind === 'compressed') throw rewriteRefused(extent);
      const grain = new Uint8Array(sparse.grainBytes);
      if (piece.kind === 'unallocated')
        await readFromBacking(this.backing, grainGuestBytes, grain.subarray(0, grainLengthBytes));
      grain.set(part, offsetBytes - grainGuestBytes);
      await sparse.writeCompressedGrain(grainIndex, grain);
      return;
    }
    if (!sparse.canAllocate(grainIndex)) {
      throw new UnsupportedError({
        format: 'vmdk',
        feature: 'allocating grain tables',
        message: `${extent.path}: grain ${grainIndex} has no grain table`,
      });
    }
    const hostGrainBytes = await sparse.reserveGrain();
    // The reserved grain reads as zeros; copy in the parent's bytes around `part` (a zeroed grain stays zero).
    if (piece.kind === 'unallocated' && this.backing) {
      const chunk = new Uint8Array(Math.min(COPY_CHUNK_BYTES, grainLengthBytes));
      for (let at = 0; at < grainLengthBytes; at += chunk.length) {
        const slice = chunk.subarray(0, Math.min(chunk.length, grainLengthBytes - at));
        await readFromBacking(this.backing, grainGuestBytes + at, slice);
        if (!isAllZero(slice)) await extent.file!.write(hostGrainBytes + at, slice);
      }
    }
    await extent.file!.write(hostGrainBytes + (offsetBytes - grainGuestBytes), part);
    await sparse.commitGrain(grainIndex, hostGrainBytes);
  }

  writeCompressed(offsetBytes: number, data: Uint8Array): Promise<void> {
    const extent = this.extentAt(offsetBytes);
    const sparse = extent.sparse;
    const isWholeGrain =
      sparse?.isCompressed === true &&
      (offsetBytes - extent.startBytes) % sparse.grainBytes === 0 &&
      data.length === sparse.grainBytes;
    if (!sparse || !isWholeGrain)
      return this.writeLock.run(() => this.writeCompressedUnlocked(offsetBytes, data));
    // The deflate starts now, on the thread pool, so the grains of concurrent calls (convert -c sends a
    // chunk's at once) compress in parallel; they are still appended in call order, under the lock.
    const payload = sparse.deflateGrain(data);
    payload.catch(() => undefined); // awaited below; a refused write must not leave it unhandled
    return this.writeLock.run(async () => {
      this.requireWritable(extent);
      const piece = await this.pieceAt(offsetBytes, data.length);
      if (piece.kind === 'compressed') throw rewriteRefused(extent);
      await sparse.appendCompressedGrains((offsetBytes - extent.startBytes) / sparse.grainBytes, [
        await payload,
      ]);
    });
  }

  private async writeCompressedUnlocked(offsetBytes: number, data: Uint8Array): Promise<void> {
    const extent = this.extentAt(offsetBytes);
    this.requireWritable(extent);
    const piece = await this.pieceAt(offsetBytes, data.length);
    if (extent.kind !== 'sparse' || !extent.sparse?.isCompressed) {
      await this.writeUnlocked(offsetBytes, data);
      return;
    }
    await this.writeGrain(extent, offsetBytes, data.subarray(0, piece.lengthBytes), piece);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    let done = 0;
    while (done < lengthBytes) {
      const at = offsetBytes + done;
      const extent = this.extentAt(at);
      const piece = await this.pieceAt(at, lengthBytes - done);
      const alreadyZero = piece.kind === 'zero' || (piece.kind === 'unallocated' && !this.backing);
      if (!alreadyZero) {
        this.requireWritable(extent);
        const sparse = extent.sparse;
        const inExtentBytes = at - extent.startBytes;
        const wholeGrain =
          sparse !== undefined &&
          inExtentBytes % sparse.grainBytes === 0 &&
          piece.lengthBytes === sparse.grainBytes;
        if (sparse?.hasZeroGrain && wholeGrain && !sparse.isCompressed) {
          await this.writeLock.run(() => sparse.zeroGrain(inExtentBytes / sparse.grainBytes));
        } else {
          if (options?.fastOnly) throw new UnsupportedError({ format: 'vmdk', feature: 'fast zero' });
          for (let written = 0; written < piece.lengthBytes; written += COPY_CHUNK_BYTES) {
            await this.write(
              at + written,
              ZEROS.subarray(0, Math.min(COPY_CHUNK_BYTES, piece.lengthBytes - written)),
            );
          }
        }
      }
      done += piece.lengthBytes;
    }
    if (options?.fua) await this.flush();
  }

  async discard(_offsetBytes: number, _lengthBytes: number): Promise<void> {
    // A hint: VMDK keeps the old grains (as qemu does).
  }

  async flush(): Promise<void> {
    if (this.isReadOnly) return;
    const synced = new Set<HostFile>();
    for (const extent of this.extents) {
      if (extent.file && !synced.has(extent.file)) {
        synced.add(extent.file);
        await extent.file.sync();
      }
    }
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const result: Extent[] = [];
    let done = 0;
    while (done < lengthBytes && result.length < 4096) {
      const at = offsetBytes + done;
      const piece = await this.pieceAt(at, lengthBytes - done, true, true);
      const extent: Extent = {
        offsetBytes: at,
        lengthBytes: piece.lengthBytes,
        allocated: piece.kind !== 'unallocated',
        zero:
          piece.kind === 'zero' ||
          (piece.kind === 'unallocated' && !this.backing) ||
          (piece.kind === 'data' && piece.isHole === true),
        data: piece.kind === 'data' || piece.kind === 'compressed',
      };
      if (piece.kind === 'data') {
        extent.hostOffsetBytes = piece.hostOffsetBytes;
        extent.hostFile = piece.path;
      }
      if (piece.kind === 'compressed') extent.compressed = true;
      appendExtent(result, extent);
      done += piece.lengthBytes;
    }
    return result;
  }

  /** Grows the guest size in place (beyond qemu 7.2, which cannot resize VMDK); see resize.ts. */
  resize(sizeBytes: number, options: { shrink: boolean }): Promise<void> {
    return this.writeLock.run(() => growVmdk(this, sizeBytes, options.shrink));
  }

  async info(): Promise<ImageInfo> {
    let actualSizeBytes = 0;
    const counted = new Set<HostFile>();
    for (const file of [...this.otherFiles, ...this.extents.map((extent) => extent.file)]) {
      if (!file || counted.has(file)) continue;
      counted.add(file);
      actualSizeBytes += (await actualSizeOf(file)) ?? 0;
    }
    const firstSparse = this.extents.find((extent) => extent.sparse ?? extent.seSparse);
    const firstGrainBytes = firstSparse?.sparse?.grainBytes ?? firstSparse?.seSparse?.grainBytes;
    const info: ImageInfo = {
      format: 'vmdk',
      filename: this.path,
      virtualSizeBytes: this.sizeBytes,
      actualSizeBytes,
      formatSpecific: {
        type: 'vmdk',
        data: {
          cid: this.descriptor.cid,
          'parent-cid': this.descriptor.parentCid,
          'create-type': this.descriptor.createType,
          extents: this.extents.map((extent) => {
            const entry: Record<string, unknown> = {};
            if (extent.sparse?.isCompressed) entry.compressed = true;
            entry['virtual-size'] = extent.sizeBytes;
            entry.filename = extent.path;
            const grainBytes = extent.sparse?.grainBytes ?? extent.seSparse?.grainBytes;
            if (grainBytes !== undefined) entry['cluster-size'] = grainBytes;
            entry.format = extent.typeName;
            return entry;
          }),
        },
      },
    };
    if (firstGrainBytes !== undefined) info.clusterSizeBytes = firstGrainBytes;
    if (this.descriptor.parentFileNameHint !== undefined && this.descriptor.parentCid !== 0xffffffff) {
      info.backingFilename = this.descriptor.parentFileNameHint;
    }
    return info;
  }

  /** qemu's vmdk_co_check: every allocated grain must start inside its file; stops at the first that does not. */
  async checkGrains(): Promise<CheckIssue[]> {
    for (const extent of this.extents) {
      const sparse = extent.sparse;
      if (!sparse) continue;
      for (let at = 0; at < extent.sizeBytes; ) {
        let mapping: GrainMapping;
        try {
          mapping = await sparse.lookup(at, extent.sizeBytes - at);
        } catch (err) {
          const sector = (extent.startBytes + at) / 512;
          const offsetBytes = (err as { offsetBytes?: number }).offsetBytes;
          return [
            {
              code: 'corruption',
              message: `ERROR: cluster offset for sector ${sector} points after EOF`,
              offsetBytes,
              fixable: false,
            },
          ];
        }
        at += mapping.lengthBytes;
      }
    }
    return [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.flush();
    } finally {
      const closedFiles = new Set<HostFile>();
      for (const file of [...this.extents.map((extent) => extent.file), ...this.otherFiles]) {
        if (!file || closedFiles.has(file)) continue;
        closedFiles.add(file);
        await file.close().catch(() => undefined);
      }
      if (this.backing) await this.backing.close();
    }
  }
}
