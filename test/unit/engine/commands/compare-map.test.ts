// compare and map on real raw files: qemu-img compare's rules (zeros beyond the smaller image,
// strict size check, sector-granular mismatch offsets) and map's merged extents.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../src/engine/block-device.ts';
import { compareImages } from '../../../../src/engine/commands/compare.ts';
import { createImage } from '../../../../src/engine/commands/create.ts';
import { mapImage } from '../../../../src/engine/commands/map.ts';
import { nativeFileOps } from '../../../../src/engine/io/native.ts';
import { openImage } from '../../../../src/engine/open.ts';

const MiB = 1024 * 1024;
let folder: string;
const open: BlockDevice[] = [];

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-compare-'));
});
afterAll(async () => {
  for (const device of open) await device.close();
  await rm(folder, { recursive: true, force: true });
});

async function image(name: string, sizeBytes: number, writes: [number, number][] = []): Promise<BlockDevice> {
  const path = join(folder, name);
  await createImage({ path, format: 'raw', sizeBytes, options: {} });
  const device = await openImage(path, { format: 'raw' });
  for (const [offsetBytes, byte] of writes) await device.write(offsetBytes, new Uint8Array([byte]));
  open.push(device);
  return device;
}

describe('compareImages', () => {
  it('finds equal images identical, and reports the first differing sector', async () => {
    const a = await image('a.raw', 2 * MiB, [[1000, 1]]);
    const b = await image('b.raw', 2 * MiB, [[1000, 1]]);
    expect(await compareImages(a, b)).toEqual({ kind: 'identical', sizeMismatch: false });
    const c = await image('c.raw', 2 * MiB, [
      [1000, 1],
      [MiB + 700, 5],
    ]);
    expect(await compareImages(a, c)).toEqual({
      kind: 'content-mismatch',
      offsetBytes: MiB + 512,
      sizeMismatch: false,
    });
  });

  it('accepts a larger image whose extra part is zeros, unless strict', async () => {
    const small = await image('small.raw', MiB, [[10, 1]]);
    const large = await image('large.raw', 2 * MiB, [[10, 1]]);
    expect(await compareImages(small, large)).toEqual({ kind: 'identical', sizeMismatch: true });
    expect(await compareImages(small, large, { strict: true })).toEqual({ kind: 'size-mismatch' });
    const dirty = await image('dirty.raw', 2 * MiB, [
      [10, 1],
      [MiB + 4097, 2],
    ]);
    expect(await compareImages(dirty, small)).toEqual({
      kind: 'content-mismatch',
      offsetBytes: MiB + 4096,
      sizeMismatch: true,
    });
  });
});

describe.skipIf(!nativeFileOps())('mapImage', () => {
  it('merges runs with equal flags and contiguous offsets', async () => {
    const device = await image('map.raw', 4 * MiB, [[2 * MiB, 1]]);
    const entries = [];
    for await (const entry of mapImage(device)) entries.push(entry);
    expect(
      entries.map((e) => [e.startBytes, e.lengthBytes, e.depth, e.present, e.zero, e.data, e.offsetBytes]),
    ).toEqual([
      [0, 4096, 0, true, false, true, 0],
      [4096, 2 * MiB - 4096, 0, true, true, false, 4096],
      [2 * MiB, 4096, 0, true, false, true, 2 * MiB],
      [2 * MiB + 4096, 2 * MiB - 4096, 0, true, true, false, 2 * MiB + 4096],
    ]);
  });
});
