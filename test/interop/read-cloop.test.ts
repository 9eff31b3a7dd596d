// cloop read by vdisk vs qemu-img 7.2: the create_compressed_fs sample gives its documented hash, and
// images built from the published layout read byte-exact as qemu reads them.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  copyRawInto,
  createWithDriver,
  run,
  runStatus,
  writeSeededRaw,
  qemuRawSha256,
  SAMPLES_DIR,
  scratchDir,
  seededBytes,
  sha256Device,
  haveTools,
  expectImageContent,
} from '../helpers/format-harness.ts';
import { buildCloop } from '../unit/engine/formats/cloop/build-cloop.ts';

const hasQemuImg = haveTools(['qemu-img'], 'cloop comparisons with qemu-img');

describe('cloop sample', () => {
  it('reads simple-pattern.cloop with the documented size and hash', async () => {
    await expectImageContent(join(SAMPLES_DIR, 'cloop/simple-pattern.cloop'), {
      format: 'cloop',
      sizeBytes: 1048576,
      sha256: '7c77af2771e0f86b7ec9707374c7416037fedae45cb0e6e27fbdf55688a5dd12',
    });
  });
});

describe.skipIf(!hasQemuImg)('cloop built from the layout, read like qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('reads mixed data and zero blocks byte-exact', async () => {
    const content = new Uint8Array(1 << 20);
    content.set(seededBytes(100_000, 5), 3000);
    content.set(seededBytes(40_000, 6), 700_000);
    const path = join(dir, 'built.cloop');
    await writeFile(path, buildCloop(content, 16384));
    const device = await openImage(path, { readOnly: true });
    try {
      const expected = await qemuRawSha256(path, dir);
      expect(await sha256Device(device)).toBe(expected);
      const middle = new Uint8Array(70_000);
      await device.read(10_000, middle);
      expect(Buffer.from(middle).equals(Buffer.from(content.subarray(10_000, 80_000)))).toBe(true);
    } finally {
      await device.close();
    }
  });
});

describe.skipIf(!hasQemuImg)('cloop written by vdisk, read by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('creates and sequentially writes an image qemu-img compares equal', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 3 << 20, 31);
    const path = join(dir, 'v.cloop');
    await createWithDriver('cloop', path, 3 << 20, { block_size: '32768' });
    const device = await openImage(path);
    try {
      await copyRawInto(raw, device);
      await expect(device.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'VDISK_ENOTSUP' });
    } finally {
      await device.close();
    }
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'cloop', raw, path]).status).toBe(0);
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', path]))['virtual-size']).toBe(3 << 20);
  });

  it('creates an all-zero image qemu-img reads', async () => {
    const path = join(dir, 'z.cloop');
    await createWithDriver('cloop', path, 1 << 20);
    const zeros = join(dir, 'zeros.raw');
    await writeFile(zeros, new Uint8Array(1 << 20));
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'cloop', zeros, path]).status).toBe(0);
  });
});
