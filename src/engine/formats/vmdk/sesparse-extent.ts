// One ESXi seSparse extent (read-only, as in qemu 7.2): a constant header (magic 0xcafebabe), a volatile
// header (0xcafecafe; a pending journal is refused), a grain directory of u64 entries naming grain
// tables by index, and grain table entries whose top nibble says unallocated / unmapped / zero /
// allocated. Layout and checks as qemu's block/vmdk.c (vmdk_open_se_sparse, get_cluster_offset).

import { CorruptImageError, ImageFormatError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { checkTableSize, readExact } from '../common/binary.ts';
import type { GrainMapping } from './sparse-extent.ts';
import { SECTOR_BYTES } from './sparse-header.ts';

const CONST_MAGIC = 0xcafebaben;
const VOLATILE_MAGIC = 0xcafecafen;
const VERSIONS = new Set([0x200000001n, 0x200000002n]);
/** The only geometry qemu accepts: 4 KiB grains, 4096-entry (32 KiB) grain tables. */
const GRAIN_SECTORS = 8;
const GRAIN_TABLE_SECTORS = 64;
const GT_ENTRIES = (GRAIN_TABLE_SECTORS * SECTOR_BYTES) / 8;
const GRAIN_BYTES = GRAIN_SECTORS * SECTOR_BYTES;
const GT_CACHE_LIMIT = 256;

export class SeSparseExtent {
  readonly file: HostFile;
  readonly sizeBytes: number;
  readonly grainBytes = GRAIN_BYTES;
  private readonly gd: BigUint64Array;
  private readonly gdOffsetBytes: number;
  private readonly tablesOffsetBytes: number;
  private readonly grainsOffsetBytes: number;
  private readonly fileSizeBytes: number;
  private readonly gtCache = new Map<number, BigUint64Array>();

  private constructor(
    file: HostFile,
    args: {
      sizeBytes: number;
      gd: BigUint64Array;
      gdOffsetBytes: number;
      tablesOffsetBytes: number;
      grainsOffsetBytes: number;
      fileSizeBytes: number;
    },
  ) {
    this.file = file;
    this.sizeBytes = args.sizeBytes;
    this.gd = args.gd;
    this.gdOffsetBytes = args.gdOffsetBytes;
    this.tablesOffsetBytes = args.tablesOffsetBytes;
    this.grainsOffsetBytes = args.grainsOffsetBytes;
    this.fileSizeBytes = args.fileSizeBytes;
  }

  /** Opens and checks the headers; reads the grain directory entries the capacity needs. */
  static async open(file: HostFile): Promise<SeSparseExtent> {
    const fileSizeBytes = await file.sizeBytes();
    const head = await readExact(file, 0, SECTOR_BYTES, 'seSparse header');
    const field = (index: number): bigint => head.readBigUInt64LE(index * 8);
    const fail = (index: number, message: string): never => {
      throw new ImageFormatError({
        file: file.path,
        offsetBytes: index * 8,
        message: `Bad const header values: ${message}`,
      });
    };
    if (field(0) !== CONST_MAGIC) fail(0, 'bad magic');
    if (!VERSIONS.has(field(1))) fail(1, `version 0x${field(1).toString(16)}`);
    if (field(3) !== BigInt(GRAIN_SECTORS)) fail(3, `grain size ${field(3)}`);
    if (field(4) !== BigInt(GRAIN_TABLE_SECTORS)) fail(4, `grain table size ${field(4)}`);
    if (field(5) !== 0n) fail(5, 'flags');
    const number = (index: number): number => {
      const value = field(index);
      if (value > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR_BYTES)))
        fail(index, `field ${index} too large`);
      return Number(value);
    };
    const capacitySectors = number(2);
    const volatileOffsetBytes = number(10) * SECTOR_BYTES;
    const gdOffsetBytes = number(16) * SECTOR_BYTES;
    const gdSizeBytes = number(17) * SECTOR_BYTES;
    const tablesOffsetBytes = number(18) * SECTOR_BYTES;
    const grainsOffsetBytes = number(24) * SECTOR_BYTES;
    const volatile = await readExact(file, volatileOffsetBytes, SECTOR_BYTES, 'seSparse volatile header');
    if (volatile.readBigUInt64LE(0) !== VOLATILE_MAGIC) {
      throw new ImageFormatError({
        file: file.path,
        offsetBytes: volatileOffsetBytes,
        message: 'Bad volatile header magic',
      });
    }
    if (volatile.readBigUInt64LE(24) !== 0n) {
      throw new UnsupportedError({
        format: 'vmdk',
        feature: 'seSparse journal replay',
        message: `${file.path}: Image is dirty, Replaying journal not supported`,
      });
    }
    const entryCount = Math.ceil(capacitySectors / (GT_ENTRIES * GRAIN_SECTORS));
    if (entryCount * 8 > gdSizeBytes) {
      throw new ImageFormatError({
        file: file.path,
        offsetBytes: 17 * 8,
        message: 'grain directory too small for the capacity',
      });
    }
    checkTableSize({
      file: file.path,
      what: 'seSparse grain directory',
      offsetBytes: gdOffsetBytes,
      lengthBytes: entryCount * 8,
      maxBytes: 64 * 1024 * 1024,
      fileSizeBytes,
    });
    const raw = await readExact(file, gdOffsetBytes, entryCount * 8, 'seSparse grain directory');
    const gd = new BigUint64Array(entryCount);
    for (let i = 0; i < entryCount; i++) gd[i] = raw.readBigUInt64LE(i * 8);
    return new SeSparseExtent(file, {
      sizeBytes: capacitySectors * SECTOR_BYTES,
      gd,
      gdOffsetBytes,
      tablesOffsetBytes,
      grainsOffsetBytes,
      fileSizeBytes,
    });
  }

  private corrupt(offsetBytes: number, message: string): CorruptImageError {
    return new CorruptImageError({ file: this.file.path, offsetBytes, lengthBytes: 8, message });
  }

  private async table(gdIndex: number): Promise<BigUint64Array> {
    const cached = this.gtCache.get(gdIndex);
    if (cached) return cached;
    const entry = this.gd[gdIndex]!;
    // Top 32 bits 0x10000000: an allocated table; the low 32 bits are its index among the tables.
    if (entry >> 32n !== 0x10000000n)
      throw this.corrupt(
        this.gdOffsetBytes + gdIndex * 8,
        `bad grain directory entry 0x${entry.toString(16)}`,
      );
    const offsetBytes = this.tablesOffsetBytes + Number(entry & 0xffffffffn) * GT_ENTRIES * 8;
    if (offsetBytes + GT_ENTRIES * 8 > this.fileSizeBytes)
      throw this.corrupt(this.gdOffsetBytes + gdIndex * 8, 'grain table past the end of the file');
    const raw = await readExact(this.file, offsetBytes, GT_ENTRIES * 8, 'seSparse grain table');
    const table = new BigUint64Array(GT_ENTRIES);
    for (let i = 0; i < GT_ENTRIES; i++) table[i] = raw.readBigUInt64LE(i * 8);
    if (this.gtCache.size >= GT_CACHE_LIMIT) this.gtCache.delete(this.gtCache.keys().next().value!);
    this.gtCache.set(gdIndex, table);
    return table;
  }

  /** Maps `offsetBytes` inside the extent (never compressed: 'unallocated', 'zero' or 'data'). */
  async lookup(offsetBytes: number, maxLengthBytes: number): Promise<GrainMapping> {
    const grainIndex = Math.floor(offsetBytes / GRAIN_BYTES);
    const inGrainBytes = offsetBytes - grainIndex * GRAIN_BYTES;
    const gdIndex = Math.floor(grainIndex / GT_ENTRIES);
    if (this.gd[gdIndex] === 0n || gdIndex >= this.gd.length) {
      // A whole missing table: report up to its end in one answer.
      const tableEndBytes = (gdIndex + 1) * GT_ENTRIES * GRAIN_BYTES;
      return { kind: 'unallocated', lengthBytes: Math.min(maxLengthBytes, tableEndBytes - offsetBytes) };
    }
    const lengthBytes = Math.min(maxLengthBytes, GRAIN_BYTES - inGrainBytes);
    const entry = (await this.table(gdIndex))[grainIndex % GT_ENTRIES]!;
    switch (entry >> 60n) {
      case 0n:
        if (entry !== 0n) throw this.corrupt(0, `bad grain table entry 0x${entry.toString(16)}`);
        return { kind: 'unallocated', lengthBytes };
      case 1n: // SCSI-unmapped
      case 2n:
        return { kind: 'zero', lengthBytes };
      case 3n: {
        const index = ((entry & 0x0fff000000000000n) >> 48n) | ((entry & 0x0000ffffffffffffn) << 12n);
        const hostOffsetBytes = this.grainsOffsetBytes + Number(index) * GRAIN_BYTES;
        if (hostOffsetBytes >= this.fileSizeBytes)
          throw this.corrupt(0, `grain ${grainIndex} points past the end of the file`);
        return { kind: 'data', lengthBytes, hostOffsetBytes: hostOffsetBytes + inGrainBytes };
      }
      default:
        throw this.corrupt(0, `bad grain table entry 0x${entry.toString(16)}`);
    }
  }
}
