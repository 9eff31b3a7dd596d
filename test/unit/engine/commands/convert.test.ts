// convert's copy loop on real raw files: content equality, holes kept (-S), -S 0 fully allocating,
// -n zero-writing over old data, in-order and out-of-order writes with several requests in flight.

import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../src/engine/block-device.ts';
import { convertDevice } from '../../../../src/engine/commands/convert.ts';
import { convertImage } from '../../../../src/engine/commands/convert-image.ts';
import { createImage } from '../../../../src/engine/commands/create.ts';
import { openImage } from '../../../../src/engine/open.ts';

const MiB = 1024 * 1024;
let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-convert-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

/** A deterministic pseudo-random pattern (xorshift), so runs are reproducible. */
function pattern(lengthBytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(lengthBytes);
  let state = seed | 1;
  for (let index = 0; index < lengthBytes; index += 1) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[index] = state & 0xff;
  }
  return out;
}

/** An 8 MiB sparse source: data at 0..1 MiB, a 4 KiB island at 3 MiB + 512, zeros written at 5 MiB. */
async function makeSource(name: string): Promise<string> {
  const path = join(folder, name);
  await createImage({ path, format: 'raw', sizeBytes: 8 * MiB, options: {} });
  const device = await openImage(path, { format: 'raw' });
  await device.write(0, pattern(MiB, 7));
  await device.write(3 * MiB + 512, pattern(4096, 9));
  await device.write(5 * MiB, new Uint8Array(256 * 1024));
  await device.close();
  return path;
}

async function readAll(device: BlockDevice): Promise<Uint8Array> {
  const buffer = new Uint8Array(device.sizeBytes);
  await device.read(0, buffer);
  return buffer;
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [left, right] = [
    await openImage(a, { format: 'raw', readOnly: true }),
    await openImage(b, { readOnly: true }),
  ];
  try {
    return Buffer.from(await readAll(left)).equals(Buffer.from(await readAll(right)));
  } finally {
    await left.close();
    await right.close();
  }
}

describe('convert', () => {
  it('copies raw to raw, keeping holes where the source has them and reporting progress to the end', async () => {
    const source = await makeSource('src1.raw');
    const target = join(folder, 'dst1.raw');
    const progress: number[] = [];
    const stats = await convertImage({
      sourcePath: source,
      targetPath: target,
      targetFormat: 'raw',
      onProgress: (done) => progress.push(done),
    });
    expect(await sameContent(source, target)).toBe(true);
    expect(progress.at(-1)).toBe(8 * MiB);
    expect(stats.bytesWritten).toBeLessThan(2 * MiB);
    expect((await stat(target)).blocks * 512).toBeLessThan(2 * MiB);
  });

  it('with -S 0 writes every byte, so the target is fully allocated', async () => {
    const source = await makeSource('src2.raw');
    const target = join(folder, 'dst2.raw');
    await convertImage({ sourcePath: source, targetPath: target, minSparseBytes: 0 });
    expect(await sameContent(source, target)).toBe(true);
    expect((await stat(target)).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
  });

  it('with -n overwrites an existing target, zeroing what the source has as holes', async () => {
    const source = await makeSource('src3.raw');
    const target = join(folder, 'dst3.raw');
    await writeFile(target, Buffer.alloc(8 * MiB, 0xee));
    await convertImage({ sourcePath: source, targetPath: target, targetFormat: 'raw', skipCreate: true });
    expect(await sameContent(source, target)).toBe(true);
  });

  it('gives the same result in order with one request and out of order with sixteen', async () => {
    const source = await makeSource('src4.raw');
    for (const [name, parallelRequests, outOfOrder] of [
      ['dst4a.raw', 1, false],
      ['dst4b.raw', 16, true],
    ] as const) {
      const target = join(folder, name);
      await convertImage({
        sourcePath: source,
        targetPath: target,
        parallelRequests,
        outOfOrder,
        chunkBytes: 64 * 1024,
      });
      expect(await sameContent(source, target)).toBe(true);
    }
  });

  it('converts into qcow2 and back without changing a byte', async () => {
    const source = await makeSource('src5.raw');
    const middle = join(folder, 'mid5.qcow2');
    const back = join(folder, 'back5.raw');
    await convertImage({ sourcePath: source, targetPath: middle, targetFormat: 'qcow2' });
    await convertImage({ sourcePath: middle, sourceFormat: 'qcow2', targetPath: back, targetFormat: 'raw' });
    expect(await sameContent(source, back)).toBe(true);
  });

  it('refuses a target smaller than the source, and compression where the target has none', async () => {
    const source = await openImage(await makeSource('src6.raw'), { format: 'raw', readOnly: true });
    const smallPath = join(folder, 'small6.raw');
    await createImage({ path: smallPath, format: 'raw', sizeBytes: MiB, options: {} });
    const small = await openImage(smallPath, { format: 'raw' });
    await expect(convertDevice(source, small)).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await small.resize?.(8 * MiB, { shrink: false });
    await expect(convertDevice(source, small, { compressed: true })).rejects.toMatchObject({
      code: 'VDISK_ENOTSUP',
    });
    await expect(convertDevice(source, small, { parallelRequests: 17 })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
      option: 'm',
    });
    await small.close();
    await source.close();
  });
});

describe('convert cancellation', () => {
  it('stops between chunks when its signal aborts, rejecting with the reason', async () => {
    const source = await makeSource('src7.raw');
    const controller = new AbortController();
    const reason = new Error('stop now');
    await expect(
      convertImage({
        sourcePath: source,
        targetPath: join(folder, 'dst7.raw'),
        chunkBytes: 64 * 1024,
        parallelRequests: 1,
        signal: controller.signal,
        onProgress: (done) => {
          if (done >= 64 * 1024) controller.abort(reason);
        },
      }),
    ).rejects.toBe(reason);
  });
});
