// dmg read by vdisk: the three hdiutil samples give their documented hashes (UDZO zlib, UDRO raw/zero/
// ignore, and UDCO ADC that qemu cannot read); images built from the UDIF layout with raw, zero, zlib,
// bzip2 and stored-LZFSE chunks read byte-exact, and as qemu-img reads them where qemu can.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  qemuRawSha256,
  runStatus,
  SAMPLES_DIR,
  scratchDir,
  seededBytes,
  sha256Device,
  haveTools,
  expectImageContent,
} from '../helpers/format-harness.ts';
import { type BuiltChunk, buildDmg } from '../unit/engine/formats/dmg/build-dmg.ts';

const hasQemuImg = haveTools(['qemu-img'], 'dmg comparisons with qemu-img');
const hasBzip2 = haveTools(['bzip2'], 'dmg bzip2 chunks', 'bzip2');

const SAMPLES: [string, number, string][] = [
  ['simple-dmg.dmg', 1799168, '20647e0a98a830a6a250b91e0e6d7200a872caea07b87a3c19611f3dd031c9df'],
  ['test_readonly.dmg', 11096064, '3b6cef049cd2e6f27665ec8d3fd72245ce4bcb005bcb2f7556a7741e20c65cf9'],
  ['HfsSampleUDCO.dmg', 1943552, 'cd5f15ddf20f56892ce2d36fb343ff9f3e59d313e0501abcf5776d395d4884e0'],
];

describe('dmg samples', () => {
  for (const [name, sizeBytes, sha256] of SAMPLES) {
    it(`reads ${name} with the documented size and hash`, async () => {
      await expectImageContent(join(SAMPLES_DIR, 'dmg', name), { format: 'dmg', sizeBytes, sha256 });
    });
  }
});

describe('dmg built from the UDIF layout', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  function content(sectors: number, seed: number, compressible = false): Uint8Array {
    const bytes = seededBytes(sectors * 512, seed);
    if (compressible) for (let i = 0; i < bytes.length; i++) bytes[i] = bytes[i]! & 0x0f;
    return bytes;
  }

  it.skipIf(!hasBzip2)('reads every chunk kind byte-exact (and as qemu-img does where it can)', async () => {
    const chunks: BuiltChunk[] = [
      { kind: 'raw', content: content(8, 1) },
      { kind: 'zero', content: new Uint8Array(16 * 512) },
      { kind: 'zlib', content: content(64, 2, true) },
      { kind: 'bzip2', content: content(300, 3, true) },
      { kind: 'ignore', content: new Uint8Array(4 * 512) },
      { kind: 'bzip2', content: new Uint8Array(200 * 512).fill(0x61) },
      { kind: 'lzfse-stored', content: content(5, 4) },
      { kind: 'adc-literal', content: content(3, 5) },
    ];
    const path = join(dir, 'built.dmg');
    await writeFile(path, buildDmg(chunks));
    const expected = Buffer.concat(chunks.map((chunk) => chunk.content));
    const device = await openImage(path, { readOnly: true });
    try {
      const whole = new Uint8Array(device.sizeBytes);
      await device.read(0, whole);
      expect(Buffer.from(whole).equals(expected)).toBe(true);
    } finally {
      await device.close();
    }
    if (hasQemuImg) {
      // qemu-img reads raw, zero, ignore and zlib chunks; bzip2 needs qemu-block-extra's dmg-bz2
      // module (not in qemu-utils), so the bzip2 chunks are checked against the bzip2 tool's input above.
      const qemuOnly = join(dir, 'qemu.dmg');
      await writeFile(
        qemuOnly,
        buildDmg(chunks.filter((chunk) => ['raw', 'zero', 'ignore', 'zlib'].includes(chunk.kind))),
      );
      const ours = await openImage(qemuOnly, { readOnly: true });
      try {
        const probe = runStatus('qemu-img', ['info', '-f', 'dmg', qemuOnly]);
        if (probe.status === 0)
          expect(await sha256Device(ours)).toBe(await qemuRawSha256(qemuOnly, dir, 'dmg'));
        else console.warn(`qemu-img cannot open the built dmg: ${probe.stderr.trim()}`);
      } finally {
        await ours.close();
      }
    }
  });

  it.skipIf(!hasQemuImg)('reads a blkx table from a binary resource fork as qemu-img does', async () => {
    const chunks: BuiltChunk[] = [
      { kind: 'raw', content: content(8, 11) },
      { kind: 'zlib', content: content(40, 12, true) },
      { kind: 'zero', content: new Uint8Array(8 * 512) },
    ];
    const path = join(dir, 'fork.dmg');
    await writeFile(path, buildDmg(chunks, { resourceFork: true }));
    const device = await openImage(path, { readOnly: true });
    try {
      const whole = new Uint8Array(device.sizeBytes);
      await device.read(0, whole);
      expect(Buffer.from(whole).equals(Buffer.concat(chunks.map((chunk) => chunk.content)))).toBe(true);
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir, 'dmg'));
    } finally {
      await device.close();
    }
  });

  it.skipIf(!hasQemuImg)('finds a trailer followed by padding, as qemu does', async () => {
    const chunks: BuiltChunk[] = [{ kind: 'zlib', content: content(16, 13, true) }];
    const path = join(dir, 'padded.dmg');
    await writeFile(path, Buffer.concat([buildDmg(chunks), Buffer.alloc(100)]));
    const device = await openImage(path, { readOnly: true });
    try {
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir, 'dmg'));
    } finally {
      await device.close();
    }
  });
});
