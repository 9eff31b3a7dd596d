// qcow2 images made by qemu-img 7.2 / qemu-io are read by vdisk byte for byte as `qemu-img convert -O raw`
// reads them: every cluster size, compat 0.10 and 1.1, refcount widths, lazy refcounts, zero clusters,
// compressed clusters (zlib, zstd), 3-deep backing chains, preallocation modes, odd sizes, > 4 GiB.

import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  has,
  qemuRawSha256,
  run,
  scratchDir,
  sha256Device,
  writeSeededRaw,
} from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED read-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

describe.skipIf(!HAS_QEMU)('qcow2 images made by qemu-img read byte-exact', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let seededRaw: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    seededRaw = await writeSeededRaw(dir, 'seeded.raw', 4 * 1024 * 1024, 7);
  });
  afterAll(async () => cleanup());

  async function expectSameAsQemu(path: string): Promise<void> {
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.formatName).toBe('qcow2');
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
    } finally {
      await device.close();
    }
  }

  /** qemu-io writes that straddle clusters, zero a range, and discard one. */
  function scribble(path: string, sizeBytes: number): void {
    const third = Math.floor(sizeBytes / 3 / 512) * 512;
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      `write -P 0x5a 1536 70000`,
      '-c',
      `write -P 0xa5 ${third + 512} 131072`,
      '-c',
      `write -z ${third + 4096} 8192`,
      '-c',
      `write -P 0x3c ${sizeBytes - 1024} 1024`,
      '-c',
      `discard ${third * 2} 65536`,
      path,
    ]);
  }

  for (const clusterBits of [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]) {
    it(`reads cluster_size ${2 ** clusterBits} written by qemu-io`, async () => {
      const path = join(dir, `cs${clusterBits}.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${2 ** clusterBits}`, path, '5M']);
      scribble(path, 5 * 1024 * 1024);
      await expectSameAsQemu(path);
    });
  }

  for (const [label, options] of [
    ['compat 0.10', 'compat=0.10'],
    ['refcount_bits 1', 'refcount_bits=1'],
    ['refcount_bits 64', 'refcount_bits=64'],
    ['lazy_refcounts', 'lazy_refcounts=on'],
    ['converted seeded data, 4 KiB clusters', 'cluster_size=4096'],
  ] as const) {
    it(`reads ${label} (seeded data via convert, then qemu-io)`, async () => {
      const path = join(dir, `${label.replace(/\W+/g, '-')}.qcow2`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', options, seededRaw, path]);
      scribble(path, 4 * 1024 * 1024);
      await expectSameAsQemu(path);
    });
  }

  it('reads zero clusters (write -z) over data, with and without unmap', async () => {
    const path = join(dir, 'zero.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', seededRaw, path]);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -z 1048576 131072',
      '-c',
      'write -z -u 2097152 196608',
      path,
    ]);
    await expectSameAsQemu(path);
    const device = await openImage(path, { readOnly: true });
    const extents = await device.blockStatus(1048576, 131072);
    await device.close();
    expect(extents[0]).toMatchObject({ allocated: true, zero: true, data: false });
  });

  for (const compression of ['zlib', 'zstd']) {
    it(`reads compressed clusters (convert -c, ${compression})`, async () => {
      const path = join(dir, `compressed-${compression}.qcow2`);
      run('qemu-img', [
        'convert',
        '-c',
        '-f',
        'raw',
        '-O',
        'qcow2',
        '-o',
        `compression_type=${compression}`,
        seededRaw,
        path,
      ]);
      await expectSameAsQemu(path);
      const device = await openImage(path, { readOnly: true });
      const extents = await device.blockStatus(0, device.sizeBytes);
      await device.close();
      expect(
        extents.some((extent) => extent.compressed === true && extent.hostOffsetBytes === undefined),
      ).toBe(true);
    });
  }

  it('reads compressed clusters with 512-byte and 2 MiB clusters', async () => {
    for (const clusterSize of ['512', '2M']) {
      const path = join(dir, `compressed-cs${clusterSize}.qcow2`);
      run('qemu-img', [
        'convert',
        '-c',
        '-f',
        'raw',
        '-O',
        'qcow2',
        '-o',
        `cluster_size=${clusterSize}`,
        seededRaw,
        path,
      ]);
      await expectSameAsQemu(path);
    }
  });

  it('reads a 3-deep backing chain, with a shorter backing file reading zeros past its end', async () => {
    const base = join(dir, 'chain-base.qcow2');
    const middle = join(dir, 'chain-middle.qcow2');
    const top = join(dir, 'chain-top.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', seededRaw, base]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'chain-base.qcow2', '-F', 'qcow2', middle, '6M']);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x11 1000000 300000',
      '-c',
      'write -z 2000000 70000',
      middle,
    ]);
    run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'chain-middle.qcow2',
      '-F',
      'qcow2',
      '-o',
      'cluster_size=4096',
      top,
    ]);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x22 1100000 5000',
      '-c',
      'write -P 0x33 5000000 10000',
      top,
    ]);
    await expectSameAsQemu(top);
    const device = await openImage(top, { readOnly: true });
    const info = await device.info();
    expect(info.backingFilename).toBe('chain-middle.qcow2');
    expect(info.backingFormat).toBe('qcow2');
    expect(device.backing?.backing?.formatName).toBe('qcow2');
    await device.close();
  });

  it('reads extended L2 entries (subclusters) over a backing file', async () => {
    const base = join(dir, 'extl2-base.qcow2');
    const path = join(dir, 'extl2.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', seededRaw, base]);
    run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'extended_l2=on',
      '-b',
      'extl2-base.qcow2',
      '-F',
      'qcow2',
      path,
    ]);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 1 4096 2048',
      '-c',
      'write -P 2 100000 50000',
      '-c',
      'write -z 200000 10000',
      '-c',
      'write -z 262144 65536',
      '-c',
      'discard 1048576 8192',
      path,
    ]);
    await expectSameAsQemu(path);
  });

  for (const preallocation of ['metadata', 'falloc', 'full']) {
    it(`reads preallocation=${preallocation} with data written`, async () => {
      const path = join(dir, `prealloc-${preallocation}.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `preallocation=${preallocation}`, path, '3M']);
      scribble(path, 3 * 1024 * 1024);
      await expectSameAsQemu(path);
    });
  }

  it('reads an image whose size is not a multiple of the cluster size', async () => {
    const path = join(dir, 'odd.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, `${3 * 1024 * 1024 + 7 * 512}`]);
    scribble(path, 3 * 1024 * 1024 + 7 * 512);
    await expectSameAsQemu(path);
  });

  it('reads data past 4 GiB of a sparse 6 GiB image', async () => {
    const path = join(dir, 'big.qcow2');
    const high = 4 * 1024 ** 3 + 12345 * 512;
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '6G']);
    run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x77 ${high} 100000`, '-c', 'write -P 0x66 0 4096', path]);
    const device = await openImage(path, { readOnly: true });
    try {
      const buffer = new Uint8Array(100000 + 2048);
      await device.read(high - 1024, buffer);
      expect(buffer.subarray(0, 1024).every((byte) => byte === 0)).toBe(true);
      expect(buffer.subarray(1024, 101024).every((byte) => byte === 0x77)).toBe(true);
      expect(buffer.subarray(101024).every((byte) => byte === 0)).toBe(true);
      const extents = await device.blockStatus(0, device.sizeBytes);
      const data = extents.filter((extent) => extent.data);
      expect(data.map((extent) => extent.offsetBytes)).toEqual([0, Math.floor(high / 65536) * 65536]);
      const map = JSON.parse(run('qemu-img', ['map', '--output=json', path])) as Array<{
        start: number;
        data: boolean;
        offset?: number;
      }>;
      const qemuData = map.filter((entry) => entry.data);
      expect(data.map((extent) => extent.hostOffsetBytes)).toEqual(qemuData.map((entry) => entry.offset));
    } finally {
      await device.close();
    }
  });

  it('reads an image copied from a qemu chain with the backing opened read-only', async () => {
    const copy = join(dir, 'copy-top.qcow2');
    await copyFile(join(dir, 'chain-top.qcow2'), copy);
    const device = await openImage(copy, { readOnly: true });
    expect(device.backing?.isReadOnly).toBe(true);
    await device.close();
  });
});
