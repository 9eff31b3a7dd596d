// Builds UDIF .dmg images from the published layout (Apple TN "UDIF", as dmg2img and qemu read it):
// chunk data, an XML plist whose blkx entry holds one base64 "mish" table, and the 512-byte koly trailer.

import { execFileSync } from 'node:child_process';
import { deflateSync } from 'node:zlib';

export type ChunkKind = 'raw' | 'zero' | 'ignore' | 'zlib' | 'bzip2' | 'lzfse-stored' | 'adc-literal';

const TYPES: Record<ChunkKind, number> = {
  raw: 1,
  zero: 0,
  ignore: 2,
  zlib: 0x80000005,
  bzip2: 0x80000006,
  'lzfse-stored': 0x80000007,
  'adc-literal': 0x80000004,
};

export interface BuiltChunk {
  kind: ChunkKind;
  /** The guest bytes (a whole number of sectors). */
  content: Uint8Array;
  /** Overrides: a lying sector count or stored length (for malformed-input tests). */
  sectorCount?: number;
  stored?: Uint8Array;
}

function encode(kind: ChunkKind, content: Uint8Array): Uint8Array {
  switch (kind) {
    case 'raw':
      return content;
    case 'zero':
    case 'ignore':
      return new Uint8Array(0);
    case 'zlib':
      return deflateSync(content);
    case 'bzip2':
      return execFileSync('bzip2', ['-c', '-9'], { input: content });
    case 'lzfse-stored': {
      const out = Buffer.alloc(8 + content.length + 4);
      out.write('bvx-', 0, 'latin1');
      out.writeUInt32LE(content.length, 4);
      out.set(content, 8);
      out.write('bvx$', 8 + content.length, 'latin1');
      return out;
    }
    case 'adc-literal': {
      const parts: number[] = [];
      for (let at = 0; at < content.length; at += 128) {
        const run = content.subarray(at, at + 128);
        parts.push(0x80 | (run.length - 1), ...run);
      }
      return Uint8Array.from(parts);
    }
  }
}

/**
 * Returns the .dmg bytes for the chunks laid out back to back from sector 0; the blkx table goes in
 * an XML plist, or (`resourceFork`) in a classic binary resource fork as older hdiutil wrote it.
 */
export function buildDmg(chunks: BuiltChunk[], options: { resourceFork?: boolean } = {}): Uint8Array {
  const stored = chunks.map((chunk) => chunk.stored ?? encode(chunk.kind, chunk.content));
  const dataBytes = stored.reduce((sum, part) => sum + part.length, 0);
  const mish = Buffer.alloc(204 + (chunks.length + 1) * 40);
  mish.write('mish', 0, 'latin1');
  mish.writeUInt32BE(1, 4);
  const totalSectors = chunks.reduce((sum, chunk) => sum + chunk.content.length / 512, 0);
  mish.writeBigUInt64BE(0n, 8);
  mish.writeBigUInt64BE(BigInt(totalSectors), 16);
  mish.writeBigUInt64BE(0n, 24);
  mish.writeUInt32BE(chunks.length + 1, 200);
  let sector = 0;
  let offset = 0;
  chunks.forEach((chunk, i) => {
    const at = 204 + i * 40;
    mish.writeUInt32BE(TYPES[chunk.kind], at);
    mish.writeBigUInt64BE(BigInt(sector), at + 8);
    mish.writeBigUInt64BE(BigInt(chunk.sectorCount ?? chunk.content.length / 512), at + 16);
    mish.writeBigUInt64BE(BigInt(offset), at + 24);
    mish.writeBigUInt64BE(BigInt(stored[i]!.length), at + 32);
    sector += chunk.content.length / 512;
    offset += stored[i]!.length;
  });
  mish.writeUInt32BE(0xffffffff, 204 + chunks.length * 40);
  mish.writeBigUInt64BE(BigInt(sector), 204 + chunks.length * 40 + 8);
  const xml = Buffer.from(
    `<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict><key>resource-fork</key><dict><key>blkx</key><array><dict>` +
      `<key>Attributes</key><string>0x0050</string><key>Data</key><data>${mish.toString('base64')}</data>` +
      `<key>Name</key><string>whole disk</string></dict></array></dict></dict></plist>\n`,
  );
  // Resource fork: a 16-byte header (data offset 0x100, data length, map offset, map length), padding to
  // 0x100, then the resource data as (u32 length, bytes) pairs; the map is not needed to find blkx.
  const forkData = Buffer.alloc(4 + mish.length);
  forkData.writeUInt32BE(mish.length, 0);
  mish.copy(forkData, 4);
  const fork = Buffer.alloc(0x100 + forkData.length);
  fork.writeUInt32BE(0x100, 0);
  fork.writeUInt32BE(0x100 + forkData.length, 4);
  fork.writeUInt32BE(forkData.length, 8);
  forkData.copy(fork, 0x100);
  const metadata = options.resourceFork ? fork : xml;
  const koly = Buffer.alloc(512);
  koly.write('koly', 0, 'latin1');
  koly.writeUInt32BE(4, 4);
  koly.writeUInt32BE(512, 8);
  koly.writeBigUInt64BE(0n, 24);
  koly.writeBigUInt64BE(BigInt(dataBytes), 32);
  if (options.resourceFork) {
    koly.writeBigUInt64BE(BigInt(dataBytes), 40);
    koly.writeBigUInt64BE(BigInt(fork.length), 48);
  } else {
    koly.writeBigUInt64BE(BigInt(dataBytes), 0xd8);
    koly.writeBigUInt64BE(BigInt(xml.length), 0xe0);
  }
  koly.writeBigUInt64BE(BigInt(totalSectors), 0x1ec);
  return Buffer.concat([...stored, metadata, koly]);
}
