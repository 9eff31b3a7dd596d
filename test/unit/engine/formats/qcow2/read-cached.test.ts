// qcow2's readCached (the NBD server's synchronous fast path, issue 5) against the device's own async
// read on images qemu-io built: normal, zero, unallocated, compressed, discarded and extended-L2 clusters,
// host runs out of guest order, a backing file, and an image written through vdisk with the writes still
// unflushed. Every byte readCached fills must equal read()'s; it must fill whole requests that need no
// thread pool, and stop where it must (compressed, backing, L2 table not cached, lock held, encryption,
// external data file).

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../../src/engine/block-device.ts';
import { clearSecrets, defineSecret } from '../../../../../src/engine/crypto/secrets.ts';
import { Qcow2Device } from '../../../../../src/engine/formats/qcow2/device.ts';
import { INCOMPAT_DATA_FILE } from '../../../../../src/engine/formats/qcow2/header.ts';
import { loadImage } from '../../../../../src/engine/formats/qcow2/load.ts';
import { NodeHostFile } from '../../../../../src/engine/io/host-file.ts';
import { nativeFileOps } from '../../../../../src/engine/io/native.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { has, prng, run, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { qemuRun, secretObject } from '../../../../helpers/qemu-crypto.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const HAS_QEMU = has('qemu-img') && has('qemu-io');
const native = nativeFileOps();
if (!HAS_QEMU)
  console.warn('SKIPPED qcow2 read-cached.test.ts: qemu-img not found (apt-get install qemu-utils)');

/** Reads the whole device once: loads every L2 table into the cache and the file into the page cache. */
async function warm(device: BlockDevice): Promise<void> {
  const buffer = Buffer.alloc(MiB);
  for (let offset = 0; offset < device.sizeBytes; offset += buffer.length)
    await device.read(offset, buffer.subarray(0, Math.min(buffer.length, device.sizeBytes - offset)));
}

/**
 * Compares readCached with read for `count` seeded ranges (any alignment, 1 byte to 1 MiB); returns how
 * many were filled whole. A filled prefix must match read() byte for byte.
 */
async function compare(device: BlockDevice, seed: number, count: number): Promise<number> {
  const random = prng(seed);
  let whole = 0;
  for (let round = 0; round < count; round++) {
    const shape = random();
    const lengthBytes =
      shape < 0.3
        ? 1 + Math.floor(random() * 8 * KiB)
        : shape < 0.6
          ? 64 * KiB * (1 + Math.floor(random() * 4))
          : 1 + Math.floor(random() * MiB);
    const aligned = random() < 0.5;
    let offset = Math.floor(random() * (device.sizeBytes - lengthBytes));
    if (aligned) offset -= offset % (4 * KiB);
    const cached = Buffer.alloc(lengthBytes, 0xee);
    const filled = device.readCached?.(offset, cached) ?? -1;
    expect(filled).toBeGreaterThanOrEqual(0);
    expect(filled).toBeLessThanOrEqual(lengthBytes);
    const expected = Buffer.alloc(lengthBytes);
    await device.read(offset, expected);
    if (!cached.subarray(0, filled).equals(expected.subarray(0, filled)))
      throw new Error(`readCached(${offset}, ${lengthBytes}) differs from read within its ${filled} bytes`);
    if (filled === lengthBytes) whole++;
  }
  return whole;
}

describe.skipIf(!HAS_QEMU || !native)('qcow2 readCached', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('qcow2-read-cached'));
  });
  afterAll(async () => cleanup());

  function qemuIo(path: string, commands: string[]): void {
    run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((command) => ['-c', command]), path]);
  }

  /** 8 MiB, 64 KiB clusters: data written back to front (host runs out of guest order), zeros, holes. */
  function buildMixed(name: string, options: string): string {
    const path = join(dir, `${name}.qcow2`);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, path, '8M']);
    const commands: string[] = [];
    for (let index = 15; index >= 0; index--)
      commands.push(
        `write -P ${0x10 + index} ${index * 256 * KiB + (index % 3) * 4 * KiB} ${96 + index * 8}k`,
      );
    commands.push('write -P 0x77 4M 2M', 'write -z 4352k 192k', 'discard 5M 128k', 'write -z 7M 64k');
    qemuIo(path, commands);
    return path;
  }

  it('matches read() on normal, zero and unallocated clusters and fills whole requests', async () => {
    const path = buildMixed('mixed', 'cluster_size=65536');
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.readCached).toBeDefined();
      await warm(device);
      // Nothing here needs the thread pool: every request is served at once.
      expect(await compare(device, 1, 300)).toBe(300);
    } finally {
      await device.close();
    }
  });

  it('matches read() with 4 KiB clusters (many short host runs) and with a v2 image', async () => {
    for (const [name, options] of [
      ['small', 'cluster_size=4096'],
      ['v2', 'compat=0.10'],
    ] as const) {
      const device = await openImage(buildMixed(name, options), { readOnly: true });
      try {
        await warm(device);
        expect(await compare(device, 2, 200)).toBe(200);
      } finally {
        await device.close();
      }
    }
  });

  it('serves extended L2 clusters that are all data or all zeros, and stops at mixed ones', async () => {
    const path = join(dir, 'extl2.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', path, '4M']);
    // Whole clusters of data at 0-1M; 2 KiB subclusters written piecemeal at 2M; zeroed subclusters at 3M.
    qemuIo(path, [
      'write -P 0x31 0 1M',
      'write -P 0x32 2M 2k',
      'write -P 0x33 2102k 6k',
      'write -z 3M 64k',
      'write -z 3200k 4k',
    ]);
    const device = await openImage(path, { readOnly: true });
    try {
      await warm(device);
      expect(await compare(device, 3, 300)).toBeGreaterThan(0);
      const buffer = Buffer.alloc(256 * KiB);
      expect(device.readCached?.(0, buffer)).toBe(buffer.length);
      expect(device.readCached?.(3 * MiB, buffer.subarray(0, 64 * KiB))).toBe(64 * KiB);
      expect(buffer.subarray(0, 64 * KiB).every((byte) => byte === 0)).toBe(true);
      // Mixed subclusters: the prefix before the cluster is served, the cluster is left to read().
      expect(device.readCached?.(2 * MiB - 64 * KiB, buffer)).toBe(64 * KiB);
    } finally {
      await device.close();
    }
  });

  it('stops at compressed clusters and leaves the rest to read()', async () => {
    const path = join(dir, 'compressed.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '2M']);
    qemuIo(path, ['write -P 0x41 0 128k', 'write -c -P 0x42 128k 64k', 'write -P 0x43 192k 64k']);
    const device = await openImage(path, { readOnly: true });
    try {
      await warm(device);
      const buffer = Buffer.alloc(256 * KiB);
      expect(device.readCached?.(0, buffer)).toBe(128 * KiB);
      expect(device.readCached?.(128 * KiB, buffer.subarray(0, 4 * KiB))).toBe(0);
      expect(device.readCached?.(192 * KiB, buffer.subarray(0, 64 * KiB))).toBe(64 * KiB);
      expect(buffer.subarray(0, 64 * KiB).every((byte) => byte === 0x43)).toBe(true);
      await compare(device, 4, 100);
    } finally {
      await device.close();
    }
  });

  it('serves what the top image maps but not what falls through to the backing file', async () => {
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '2M']);
    qemuIo(base, ['write -P 0x51 0 2M']);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '2M']);
    qemuIo(top, ['write -P 0x52 0 256k', 'write -z 256k 64k']);
    const device = await openImage(top, { readOnly: true });
    try {
      await warm(device);
      const buffer = Buffer.alloc(512 * KiB);
      // Data then a zero cluster (v3 zero flag hides the backing), then the backing's bytes: stop there.
      expect(device.readCached?.(0, buffer)).toBe(320 * KiB);
      expect(buffer.subarray(0, 256 * KiB).every((byte) => byte === 0x52)).toBe(true);
      expect(buffer.subarray(256 * KiB, 320 * KiB).every((byte) => byte === 0)).toBe(true);
      expect(device.readCached?.(MiB, buffer)).toBe(0);
      await compare(device, 5, 100);
    } finally {
      await device.close();
    }
  });

  it('stops where the L2 table is not cached and while the metadata lock is held', async () => {
    const path = join(dir, 'cold.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '2M']);
    qemuIo(path, ['write -P 0x61 0 2M']);
    const device = await openImage(path, { readOnly: true });
    try {
      const buffer = Buffer.alloc(64 * KiB);
      expect(device.readCached?.(0, buffer)).toBe(0);
      const pending = device.read(MiB, Buffer.alloc(4 * KiB));
      expect(device.readCached?.(0, buffer)).toBe(0);
      await pending;
      expect(device.readCached?.(0, buffer)).toBe(buffer.length);
      expect(buffer.every((byte) => byte === 0x61)).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('matches read() after writes, zeroes and discards through vdisk that are not flushed yet', async () => {
    const path = join(dir, 'written.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '8M']);
    qemuIo(path, ['write -P 0x71 0 4M']);
    const device = await openImage(path);
    try {
      const random = prng(7);
      for (let step = 0; step < 60; step++) {
        const offset = Math.floor(random() * 7 * MiB);
        const lengthBytes = 1 + Math.floor(random() * 300 * KiB);
        const action = random();
        if (action < 0.6) await device.write(offset, seededBytes(lengthBytes, step + 1));
        else if (action < 0.8) await device.writeZeroes(offset, lengthBytes, { mayUnmap: random() < 0.5 });
        else await device.discard?.(offset, lengthBytes);
      }
      await warm(device);
      expect(await compare(device, 8, 200)).toBeGreaterThan(150);
    } finally {
      await device.close();
    }
  });

  it('is not offered for a LUKS-encrypted image, whose reads still decrypt', async () => {
    const path = join(dir, 'luks.qcow2');
    qemuRun('qemu-img', [
      'create',
      '-q',
      ...secretObject('read-cached'),
      '-f',
      'qcow2',
      '-o',
      'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
      path,
      '1M',
    ]);
    defineSecret('sec0', Buffer.from('read-cached'));
    try {
      const device = await openImage(path, { driverOptions: { 'encrypt.key-secret': 'sec0' } });
      try {
        await device.write(0, Buffer.alloc(64 * KiB, 0x5c));
        const buffer = Buffer.alloc(64 * KiB);
        await device.read(0, buffer);
        expect(buffer.every((byte) => byte === 0x5c)).toBe(true);
        expect(device.readCached).toBeUndefined();
      } finally {
        await device.close();
      }
    } finally {
      clearSecrets();
    }
  });

  it('is not offered with an external data file, whose reads still come from it', async () => {
    const path = join(dir, 'with-data-file.qcow2');
    const data = join(dir, 'with-data-file.raw');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${data}`, path, '1M']);
    qemuIo(path, ['write -P 0x6d 0 128k']);
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.readCached).toBeUndefined();
      const buffer = Buffer.alloc(128 * KiB);
      await device.read(0, buffer);
      expect(buffer.every((byte) => byte === 0x6d)).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('is not offered for encrypted images or an external data file', async () => {
    const path = join(dir, 'plain.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1M']);
    for (const change of ['none', 'crypt', 'data-file'] as const) {
      const file = await NodeHostFile.open(path, { readOnly: true });
      try {
        const image = await loadImage({ file, path, readOnly: true }, async () => undefined);
        if (change === 'crypt') image.header.cryptMethod = 2;
        if (change === 'data-file') image.header.incompatibleFeatures |= INCOMPAT_DATA_FILE;
        const device = new Qcow2Device(image, undefined);
        expect(device.readCached === undefined).toBe(change !== 'none');
      } finally {
        await file.close();
      }
    }
  });
});
