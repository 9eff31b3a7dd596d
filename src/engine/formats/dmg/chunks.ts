// UDIF (Apple .dmg) chunk table: the 512-byte "koly" trailer, the blkx resources it points to (the
// binary resource fork, or else the XML property list), and the "mish" block tables inside them.
// Rules as qemu 7.2's block/dmg.c (sizes bounded at 64 MiB per chunk, offsets relative to the mish).

import { CorruptImageError, ImageFormatError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { readExact, u64be, viewOf } from '../common/binary.ts';

export const DMG_CHUNK_ZERO = 0x00000000;
export const DMG_CHUNK_RAW = 0x00000001;
export const DMG_CHUNK_IGNORE = 0x00000002;
export const DMG_CHUNK_ADC = 0x80000004;
export const DMG_CHUNK_ZLIB = 0x80000005;
export const DMG_CHUNK_BZIP2 = 0x80000006;
export const DMG_CHUNK_LZFSE = 0x80000007;
const KNOWN_TYPES = new Set([
  DMG_CHUNK_ZERO,
  DMG_CHUNK_RAW,
  DMG_CHUNK_IGNORE,
  DMG_CHUNK_ADC,
  DMG_CHUNK_ZLIB,
  DMG_CHUNK_BZIP2,
  DMG_CHUNK_LZFSE,
]);
/** qemu's DMG_LENGTHS_MAX: no chunk's stored or decoded size exceeds 64 MiB. */
export const DMG_MAX_CHUNK_BYTES = 64 * 1024 * 1024;
const MAX_PLIST_BYTES = 64 * 1024 * 1024;
const MAX_CHUNKS = 4 * 1024 * 1024;
const KOLY_BYTES = 512;
const MISH_MIN_BYTES = 244;

export interface DmgChunk {
  type: number;
  firstSector: number;
  sectorCount: number;
  /** Where the stored bytes are in the file. */
  offsetBytes: number;
  lengthBytes: number;
}

interface Koly {
  rsrcOffsetBytes: number;
  rsrcLengthBytes: number;
  xmlOffsetBytes: number;
  xmlLengthBytes: number;
}

async function readKoly(file: HostFile, path: string): Promise<Koly> {
  const fileSizeBytes = await file.sizeBytes();
  if (fileSizeBytes < KOLY_BYTES)
    throw new ImageFormatError({
      file: path,
      offsetBytes: 0,
      message: 'dmg file must be at least 512 bytes long',
    });
  // As qemu's dmg_find_koly_offset: the trailer may start anywhere in the last 511 bytes of the
  // second-last sector or the first 4 bytes of the last one (files of odd sizes).
  const windowStart = fileSizeBytes > 511 + 512 ? fileSizeBytes - 511 - 512 : 0;
  const window = await readExact(
    file,
    windowStart,
    Math.min(fileSizeBytes - windowStart, 515),
    'UDIF trailer search window',
  );
  const found = Buffer.from(window).indexOf('koly', 0, 'latin1');
  if (found < 0 || windowStart + found + KOLY_BYTES > fileSizeBytes) {
    throw new ImageFormatError({
      file: path,
      offsetBytes: windowStart,
      message: 'Could not locate UDIF trailer in dmg file',
    });
  }
  const at = windowStart + found;
  const koly = await readExact(file, at, KOLY_BYTES, 'UDIF trailer');
  const result = {
    rsrcOffsetBytes: u64be(koly, 40, path, at + 40),
    rsrcLengthBytes: u64be(koly, 48, path, at + 48),
    xmlOffsetBytes: u64be(koly, 0xd8, path, at + 0xd8),
    xmlLengthBytes: u64be(koly, 0xe0, path, at + 0xe0),
  };
  for (const [offset, length, field] of [
    [result.rsrcOffsetBytes, result.rsrcLengthBytes, 40],
    [result.xmlOffsetBytes, result.xmlLengthBytes, 0xd8],
  ] as const) {
    if (length > MAX_PLIST_BYTES || offset + length > fileSizeBytes) {
      throw new ImageFormatError({
        file: path,
        offsetBytes: at + field,
        message: `UDIF trailer names ${length} bytes at ${offset}, outside the file or over ${MAX_PLIST_BYTES}`,
      });
    }
  }
  return result;
}

/** Appends the chunks of one mish block; non-mish resources are skipped, as qemu does. */
function readMish(block: Uint8Array, path: string, chunks: DmgChunk[]): void {
  if (block.length < MISH_MIN_BYTES || Buffer.from(block.subarray(0, 4)).toString('latin1') !== 'mish')
    return;
  const view = viewOf(block);
  const firstSector = u64be(block, 8, path);
  const dataOffsetBytes = u64be(block, 24, path);
  const declared = view.getUint32(200, false);
  const chunkCount = Math.min(declared, Math.floor((block.length - 204) / 40));
  for (let i = 0; i < chunkCount; i++) {
    const at = 204 + i * 40;
    const type = view.getUint32(at, false);
    if (!KNOWN_TYPES.has(type)) continue; // comments (0x7ffffffe), the terminator (0xffffffff), ...
    const chunk: DmgChunk = {
      type,
      firstSector: u64be(block, at + 8, path) + firstSector,
      sectorCount: u64be(block, at + 16, path),
      offsetBytes: u64be(block, at + 24, path) + dataOffsetBytes,
      lengthBytes: u64be(block, at + 32, path),
    };
    if (chunk.sectorCount * 512 > DMG_MAX_CHUNK_BYTES) {
      throw new CorruptImageError({
        file: path,
        message: `sector count ${chunk.sectorCount} for chunk ${chunks.length} is larger than max (${DMG_MAX_CHUNK_BYTES / 512})`,
      });
    }
    if (chunk.lengthBytes > DMG_MAX_CHUNK_BYTES) {
      throw new CorruptImageError({
        file: path,
        message: `length ${chunk.lengthBytes} for chunk ${chunks.length} is larger than max (${DMG_MAX_CHUNK_BYTES})`,
      });
    }
    if (chunks.length >= MAX_CHUNKS)
      throw new ImageFormatError({ file: path, message: `more than ${MAX_CHUNKS} chunks` });
    chunks.push(chunk);
  }
}

/** The blkx "Data" entries of an XML property list, decoded from base64. */
function plistBlkxData(xml: string): Uint8Array[] {
  const keyAt = xml.indexOf('<key>blkx</key>');
  if (keyAt < 0) return [];
  const arrayStart = xml.indexOf('<array>', keyAt);
  const arrayEnd = xml.indexOf('</array>', arrayStart);
  if (arrayStart < 0 || arrayEnd < 0) return [];
  const body = xml.slice(arrayStart, arrayEnd);
  const blocks: Uint8Array[] = [];
  for (const match of body.matchAll(/<data>([^<]*)<\/data>/g))
    blocks.push(Buffer.from(match[1]!.replace(/\s+/g, ''), 'base64'));
  return blocks;
}

/** Reads every chunk of the image, sorted by first sector. Throws ImageFormatError / CorruptImageError. */
export async function readDmgChunks(file: HostFile, path: string): Promise<DmgChunk[]> {
  const koly = await readKoly(file, path);
  const chunks: DmgChunk[] = [];
  if (koly.rsrcLengthBytes !== 0) {
    // Classic resource fork header (as qemu reads it): u32 data offset at +0, u32 data length at +8;
    // the data is a run of (u32 length, resource) pairs, the map after it is not needed.
    const fork = await readExact(file, koly.rsrcOffsetBytes, koly.rsrcLengthBytes, 'UDIF resource fork');
    const view = viewOf(fork);
    const dataOffset = fork.length >= 16 ? view.getUint32(0, false) : Number.MAX_SAFE_INTEGER;
    const dataLength = fork.length >= 16 ? view.getUint32(8, false) : 0;
    if (dataOffset > fork.length || dataLength === 0 || dataOffset + dataLength > fork.length) {
      throw new ImageFormatError({
        file: path,
        offsetBytes: koly.rsrcOffsetBytes,
        message: 'invalid UDIF resource fork header',
      });
    }
    let at = dataOffset;
    const end = dataOffset + dataLength;
    while (at + 4 <= end) {
      const lengthBytes = view.getUint32(at, false);
      if (lengthBytes === 0 || lengthBytes > end - at - 4) {
        throw new ImageFormatError({
          file: path,
          offsetBytes: koly.rsrcOffsetBytes + at,
          message: 'invalid resource length in the UDIF resource fork',
        });
      }
      readMish(fork.subarray(at + 4, at + 4 + lengthBytes), path, chunks);
      at += 4 + lengthBytes;
    }
  } else if (koly.xmlLengthBytes !== 0) {
    const xml = await readExact(file, koly.xmlOffsetBytes, koly.xmlLengthBytes, 'UDIF property list');
    for (const block of plistBlkxData(Buffer.from(xml).toString('utf8'))) readMish(block, path, chunks);
  } else {
    throw new ImageFormatError({ file: path, message: 'Image file has no resource fork or XML' });
  }
  if (chunks.length === 0) throw new ImageFormatError({ file: path, message: 'UDIF image has no chunks' });
  chunks.sort((a, b) => a.firstSector - b.firstSector);
  return chunks;
}
