// The raw driver on real files in os.tmpdir(): byte identity, sparse maps from SEEK_DATA/SEEK_HOLE,
// hole punching for zero writes, qemu's preallocation modes, and the fallback when the host file
// offers no native extras.

import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../src/engine/block-device.ts';
import { rawDriver } from '../../../../src/engine/formats/raw.ts';
import { type HostFile, NodeHostFile } from '../../../../src/engine/io/host-file.ts';
import { nativeFileOps } from '../../../../src/engine/io/native.ts';
import { openImage } from '../../../../src/engine/open.ts';

const MiB = 1024 * 1024;
let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-raw-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

async function createRaw(
  name: string,
  sizeBytes: number,
  options: Record<string, string> = {},
): Promise<string> {
  const path = join(folder, name);
  const file = await NodeHostFile.open(path, { readOnly: false, create: true, truncate: true });
  await rawDriver.create({ path, file, sizeBytes, options, openBacking: undefined });
  await file.close();
  return path;
}

async function openRaw(path: string, readOnly = false): Promise<BlockDevice> {
  const file = await NodeHostFile.open(path, { readOnly });
  return rawDriver.open({ path, file, readOnly, openBacking: undefined, options: {} });
}

describe('raw driver', () => {
  it('creates a sparse file of the exact size with the first block written', async () => {
    const path = await createRaw('sparse.raw', 3 * MiB);
    const info = await stat(path);
    expect(info.size).toBe(3 * MiB);
    expect(info.blocks * 512).toBeLessThan(64 * 1024);
  });

  it('reads back what it wrote, at the same host offsets', async () => {
    const path = await createRaw('rw.raw', 2 * MiB);
    const device = await openRaw(path);
    const data = new Uint8Array(8192).map((_, index) => (index * 7) & 0xff);
    await device.write(MiB + 512, data);
    const back = new Uint8Array(8192);
    await device.read(MiB + 512, back);
    expect(back).toEqual(data);
    await device.close();
  });

  it.skipIf(!nativeFileOps())('maps holes and data runs with SEEK_DATA/SEEK_HOLE', async () => {
    const path = await createRaw('map.raw', 4 * MiB);
    const device = await openRaw(path);
    await device.write(MiB, new Uint8Array(64 * 1024).fill(1));
    const extents = await device.blockStatus(0, device.sizeBytes);
    expect(extents.map((e) => [e.offsetBytes, e.lengthBytes, e.data, e.zero, e.allocated])).toEqual([
      [0, 4096, true, false, true],
      [4096, MiB - 4096, false, true, true],
      [MiB, 64 * 1024, true, false, true],
      [MiB + 64 * 1024, 3 * MiB - 64 * 1024, false, true, true],
    ]);
    expect(extents.every((e) => e.hostOffsetBytes === e.offsetBytes)).toBe(true);
    const tail = await device.blockStatus(MiB + 4096, 8192);
    expect(tail).toHaveLength(1);
    expect(tail[0]).toMatchObject({ offsetBytes: MiB + 4096, lengthBytes: 8192, data: true });
    await device.close();
  });

  it.skipIf(!nativeFileOps())(
    'punches a hole for writeZeroes with mayUnmap, and the range reads as zeros',
    async () => {
      const path = await createRaw('punch.raw', 2 * MiB);
      const device = await openRaw(path);
      await device.write(0, new Uint8Array(2 * MiB).fill(0xaa));
      const before = (await stat(path)).blocks;
      await device.writeZeroes(MiB, MiB, { mayUnmap: true });
      expect((await stat(path)).blocks).toBeLessThan(before);
      const back = new Uint8Array(MiB);
      await device.read(MiB, back);
      expect(back.every((byte) => byte === 0)).toBe(true);
      await device.close();
    },
  );

  it.skipIf(!nativeFileOps())('preallocates with falloc and full', async () => {
    for (const mode of ['falloc', 'full']) {
      const path = await createRaw(`prealloc-${mode}.raw`, 2 * MiB, { preallocation: mode });
      const info = await stat(path);
      expect(info.size).toBe(2 * MiB);
      expect(info.blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
    }
  });

  it('rejects an unknown preallocation mode', async () => {
    await expect(createRaw('bad.raw', MiB, { preallocation: 'metadata' })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
      option: 'preallocation',
    });
  });

  it('reports everything as data when the host file cannot seek holes, and writes zeros slowly', async () => {
    const path = await createRaw('plain.raw', MiB);
    const inner = await NodeHostFile.open(path, { readOnly: false });
    const plain: HostFile = {
      path,
      isReadOnly: false,
      read: (o, b) => inner.read(o, b),
      write: (o, d) => inner.write(o, d),
      sizeBytes: () => inner.sizeBytes(),
      truncate: (s) => inner.truncate(s),
      sync: () => inner.sync(),
      close: () => inner.close(),
    };
    const device = await rawDriver.open({
      path,
      file: plain,
      readOnly: false,
      openBacking: undefined,
      options: {},
    });
    expect(await device.blockStatus(0, MiB)).toEqual([
      {
        offsetBytes: 0,
        lengthBytes: MiB,
        allocated: true,
        zero: false,
        data: true,
        hostOffsetBytes: 0,
        hostFile: path,
      },
    ]);
    await device.write(4096, new Uint8Array(4096).fill(3));
    await device.writeZeroes(0, MiB);
    const back = new Uint8Array(MiB);
    await device.read(0, back);
    expect(back.every((byte) => byte === 0)).toBe(true);
    await expect(device.writeZeroes(0, 4096, { fastOnly: true })).rejects.toMatchObject({
      code: 'VDISK_ENOTSUP',
    });
    await device.close();
  });

  it('grows and shrinks (shrink only when asked)', async () => {
    const path = await createRaw('resize.raw', MiB);
    const device = await openRaw(path);
    await device.resize?.(2 * MiB, { shrink: false });
    expect(device.sizeBytes).toBe(2 * MiB);
    await expect(device.resize?.(MiB, { shrink: false })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await device.resize?.(MiB, { shrink: true });
    expect((await stat(path)).size).toBe(MiB);
    await device.close();
  });

  it('is probed as the format of last resort and opened read-only without writes', async () => {
    const path = join(folder, 'probe.raw');
    await writeFile(path, Buffer.alloc(4096, 0x42));
    const device = await openImage(path, { readOnly: true });
    expect(device.formatName).toBe('raw');
    expect((await device.info()).virtualSizeBytes).toBe(4096);
    await expect(device.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    await device.close();
  });

  it('measures the guest size rounded up to a sector', async () => {
    expect(await rawDriver.measure({ sizeBytes: 1000, options: {} })).toEqual({
      requiredBytes: 1024,
      fullyAllocatedBytes: 1024,
    });
  });
});
