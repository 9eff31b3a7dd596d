// Apple disk images (UDIF .dmg), read-only: raw, zero, ignore, zlib, bzip2, LZFSE and ADC chunks, each
// decoded into exactly its declared sector count (decoders are bounded by it); ends with the driver
// record. Sizes and probe as qemu 7.2's block/dmg.c; ADC is beyond qemu.

import { inflateSync } from '../../lazy-zlib.ts';
import type { BlockDevice } from '../../block-device.ts';
import { CorruptImageError } from '../../errors.ts';
import {
  decodedRange,
  MappedDevice,
  type RangeMapping,
  readHostZeroFilled,
} from '../common/mapped-device.ts';
import type { FormatDriver, OpenContext } from '../driver.ts';
import { decodeAdc } from './adc.ts';
import { decodeBzip2 } from './bzip2.ts';
import {
  DMG_CHUNK_ADC,
  DMG_CHUNK_BZIP2,
  DMG_CHUNK_IGNORE,
  DMG_CHUNK_LZFSE,
  DMG_CHUNK_RAW,
  DMG_CHUNK_ZERO,
  DMG_CHUNK_ZLIB,
  type DmgChunk,
  readDmgChunks,
} from './chunks.ts';
import { decodeLzfse } from './lzfse.ts';

const SECTOR_BYTES = 512;

function decodeStored(type: number, stored: Uint8Array, outputBytes: number): Uint8Array {
  switch (type) {
    case DMG_CHUNK_ZLIB: {
      const plain = inflateSync(stored, { maxOutputLength: outputBytes });
      if (plain.length !== outputBytes)
        throw new Error(`zlib chunk inflates to ${plain.length} bytes, not ${outputBytes}`);
      return plain;
    }
    case DMG_CHUNK_BZIP2:
      return decodeBzip2(stored, outputBytes);
    case DMG_CHUNK_LZFSE:
      return decodeLzfse(stored, outputBytes);
    case DMG_CHUNK_ADC:
      return decodeAdc(stored, outputBytes);
    default:
      throw new Error(`chunk type 0x${type.toString(16)} is not compressed`);
  }
}

class DmgDevice extends MappedDevice {
  private readonly chunks: DmgChunk[];
  private cached: { chunk: DmgChunk; plain: Uint8Array } | undefined;

  constructor(context: OpenContext, chunks: DmgChunk[], sizeBytes: number) {
    super({ formatName: 'dmg', path: context.path, file: context.file, sizeBytes, isReadOnly: true });
    this.chunks = chunks;
  }

  /** The chunk holding `sector`, or the index of the next chunk (a gap) as a negative number - 1. */
  private find(sector: number): DmgChunk | number {
    let low = 0;
    let high = this.chunks.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const chunk = this.chunks[middle]!;
      if (sector < chunk.firstSector) high = middle - 1;
      else if (sector >= chunk.firstSector + chunk.sectorCount) low = middle + 1;
      else return chunk;
    }
    return -low - 1;
  }

  private async decode(chunk: DmgChunk): Promise<Uint8Array> {
    if (this.cached?.chunk === chunk) return this.cached.plain;
    const stored = new Uint8Array(chunk.lengthBytes);
    const count = await this.file.read(chunk.offsetBytes, stored);
    const where = { file: this.path, offsetBytes: chunk.offsetBytes, lengthBytes: chunk.lengthBytes };
    if (count < stored.length)
      throw new CorruptImageError({
        ...where,
        message: `chunk at sector ${chunk.firstSector} extends past the end of the file`,
      });
    let plain: Uint8Array;
    try {
      plain = decodeStored(chunk.type, stored, chunk.sectorCount * SECTOR_BYTES);
    } catch (err) {
      throw new CorruptImageError({
        ...where,
        message: `chunk at sector ${chunk.firstSector} (type 0x${chunk.type.toString(16)}) does not decode to its ${chunk.sectorCount} sectors: ${(err as Error).message}`,
        cause: err,
      });
    }
    this.cached = { chunk, plain };
    return plain;
  }

  protected async mapRange(offsetBytes: number, maxLengthBytes: number): Promise<RangeMapping> {
    const sector = Math.floor(offsetBytes / SECTOR_BYTES);
    const found = this.find(sector);
    if (typeof found === 'number') {
      const next = this.chunks[-found - 1];
      const gapEnd = next ? next.firstSector * SECTOR_BYTES : this.sizeBytes;
      return { kind: 'unallocated', lengthBytes: Math.min(gapEnd - offsetBytes, maxLengthBytes) };
    }
    const chunk = found;
    const inChunk = offsetBytes - chunk.firstSector * SECTOR_BYTES;
    const lengthBytes = chunk.sectorCount * SECTOR_BYTES - inChunk;
    if (chunk.type === DMG_CHUNK_ZERO || chunk.type === DMG_CHUNK_IGNORE)
      return { kind: 'zero', lengthBytes };
    if (chunk.type === DMG_CHUNK_RAW) {
      // A raw chunk shorter than its sectors reads zeros after its stored bytes.
      if (inChunk >= chunk.lengthBytes) return { kind: 'zero', lengthBytes };
      return {
        kind: 'decoded',
        lengthBytes: Math.min(lengthBytes, chunk.lengthBytes - inChunk),
        read: (buffer) => readHostZeroFilled(this.file, chunk.offsetBytes + inChunk, buffer),
      };
    }
    return decodedRange(lengthBytes, inChunk, () => this.decode(chunk));
  }
}

async function openDmg(context: OpenContext): Promise<BlockDevice> {
  const chunks = await readDmgChunks(context.file, context.path);
  const fileSizeBytes = await context.file.sizeBytes();
  for (const chunk of chunks) {
    const stored = chunk.type !== DMG_CHUNK_ZERO && chunk.type !== DMG_CHUNK_IGNORE;
    if (stored && chunk.offsetBytes + chunk.lengthBytes > fileSizeBytes) {
      throw new CorruptImageError({
        file: context.path,
        offsetBytes: chunk.offsetBytes,
        lengthBytes: chunk.lengthBytes,
        message: `chunk at sector ${chunk.firstSector} extends past the end of the file (${fileSizeBytes} bytes)`,
      });
    }
  }
  let sectors = 0;
  for (const chunk of chunks) sectors = Math.max(sectors, chunk.firstSector + chunk.sectorCount);
  for (let i = 1; i < chunks.length; i++) {
    const previous = chunks[i - 1]!;
    if (previous.firstSector + previous.sectorCount > chunks[i]!.firstSector) {
      throw new CorruptImageError({
        file: context.path,
        message: `chunks overlap at sector ${chunks[i]!.firstSector}`,
      });
    }
  }
  return new DmgDevice(context, chunks, sectors * SECTOR_BYTES);
}

export const dmgDriver = {
  name: 'dmg',
  description: 'Apple disk image (UDIF), read-only',
  // As qemu: the name decides (there is no magic at the start of the file).
  probe: (_head: Uint8Array, fileName: string) => (fileName.length > 4 && fileName.endsWith('.dmg') ? 2 : 0),
  capabilities: {
    create: false,
    write: false,
    backing: false,
    internalSnapshots: false,
    check: false,
    compression: [],
    encryption: [],
    resize: 'none',
    concurrentWrites: false,
  },
  createOptions: [],
  open: openDmg,
} satisfies FormatDriver;
