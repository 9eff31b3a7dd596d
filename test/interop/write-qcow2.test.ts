// Images vdisk creates and writes through the engine API (seeded random write / writeZeroes / discard /
// compressed workloads) pass `qemu-img check` cleanly and equal, under `qemu-img compare`, a raw reference
// written in parallel; fresh `create` output is byte-identical to `qemu-img create`'s for the same options.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/engine/block-device.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { openImage } from '../../src/engine/open.ts';
import {
  createWithDriver,
  has,
  prng,
  run,
  runStatus,
  scratchDir,
  seededBytes,
} from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED write-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

interface Workload {
  seed: number;
  operations: number;
  clusterSizeBytes: number;
  /** Content a discarded whole cluster reads as afterwards (zeros, or the backing's bytes on v2). */
  discardReadsBacking: boolean;
  compressed: boolean;
}

/** Runs the same seeded operations on `device` and on the raw `reference`; returns nothing, both end equal. */
async function runWorkload(
  device: BlockDevice,
  reference: NodeHostFile,
  backingBytes: Uint8Array | undefined,
  workload: Workload,
): Promise<void> {
  const random = prng(workload.seed);
  const sizeBytes = device.sizeBytes;
  const cluster = workload.clusterSizeBytes;
  for (let step = 0; step < workload.operations; step++) {
    const choice = random();
    const offsetBytes = Math.floor(random() * (sizeBytes - 1));
    const lengthBytes = Math.max(
      1,
      Math.min(sizeBytes - offsetBytes, Math.floor(random() * 3 * cluster) + 1),
    );
    if (choice < 0.5) {
      const data = seededBytes(lengthBytes, workload.seed * 1000 + step);
      await device.write(offsetBytes, data);
      await reference.write(offsetBytes, data);
    } else if (choice < 0.7) {
      await device.writeZeroes(offsetBytes, lengthBytes, { mayUnmap: random() < 0.5 });
      await reference.write(offsetBytes, new Uint8Array(lengthBytes));
    } else if (choice < 0.85) {
      const start = Math.ceil(offsetBytes / cluster) * cluster;
      const end = Math.min(sizeBytes, Math.floor((offsetBytes + lengthBytes) / cluster) * cluster);
      if (end <= start) continue;
      await device.discard(start, end - start);
      const after =
        workload.discardReadsBacking && backingBytes
          ? backingBytes.subarray(start, end)
          : new Uint8Array(end - start);
      const expected = new Uint8Array(end - start);
      expected.set(
        after.subarray(0, Math.max(0, Math.min(after.length, (backingBytes?.length ?? 0) - start))),
      );
      await reference.write(start, workload.discardReadsBacking ? expected : new Uint8Array(end - start));
    } else if (choice < 0.93 && workload.compressed && device.writeCompressed) {
      const start = Math.floor(offsetBytes / cluster) * cluster;
      const length = Math.min(cluster, sizeBytes - start);
      const data = random() < 0.5 ? new Uint8Array(length).fill(step & 0xff) : seededBytes(length, step + 5);
      data.fill(0, 0, Math.floor(length / 3));
      await device.writeCompressed(start, data);
      await reference.write(start, data);
    } else {
      await device.flush();
    }
  }
}

describe.skipIf(!HAS_QEMU)('qcow2 images written by vdisk pass qemu-img check and compare', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
  });
  afterAll(async () => cleanup());

  async function workloadCase(
    name: string,
    sizeBytes: number,
    options: Record<string, string>,
    workload: Omit<Workload, 'discardReadsBacking'>,
    withBacking = false,
  ): Promise<void> {
    const path = join(dir, `${name}.qcow2`);
    const refPath = join(dir, `${name}.raw`);
    let backingBytes: Uint8Array | undefined;
    if (withBacking) {
      const basePath = join(dir, `${name}-base.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', basePath, String(sizeBytes - 3 * 65536)]);
      run('qemu-io', [
        '-f',
        'qcow2',
        '-c',
        `write -P 0x42 0 ${sizeBytes - 3 * 65536}`,
        '-c',
        'write -z 65536 65536',
        basePath,
      ]);
      run('qemu-img', ['convert', '-O', 'raw', basePath, refPath]);
      backingBytes = new Uint8Array(await readFile(refPath));
      await createWithDriver('qcow2', path, sizeBytes, options, {
        file: `${name}-base.qcow2`,
        format: 'qcow2',
      });
    } else {
      await createWithDriver('qcow2', path, sizeBytes, options);
    }
    const reference = await NodeHostFile.open(refPath, {
      readOnly: false,
      create: !withBacking,
      truncate: !withBacking,
    });
    await reference.truncate(sizeBytes);
    const device = await openImage(path);
    try {
      const v2 = options.compat === '0.10';
      await runWorkload(device, reference, backingBytes, {
        ...workload,
        discardReadsBacking: v2 && withBacking,
      });
    } finally {
      await device.close();
      await reference.close();
    }
    const check = runStatus('qemu-img', ['check', '--output=json', path]);
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
    const report = JSON.parse(check.stdout) as { corruptions?: number; leaks?: number };
    expect(report.corruptions ?? 0).toBe(0);
    expect(report.leaks ?? 0).toBe(0);
    const compare = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', refPath, path]);
    expect(compare.stdout + compare.stderr).toContain('Images are identical');
    expect(compare.status).toBe(0);
  }

  const MiB = 1024 * 1024;
  it('default options (v3, 64 KiB clusters)', () =>
    workloadCase('v3', 8 * MiB, {}, { seed: 1, operations: 150, clusterSizeBytes: 65536, compressed: true }));
  it('compat=0.10', () =>
    workloadCase(
      'v2',
      8 * MiB,
      { compat: '0.10' },
      { seed: 2, operations: 150, clusterSizeBytes: 65536, compressed: true },
    ));
  it('cluster_size=512', () =>
    workloadCase(
      'cs512',
      2 * MiB,
      { cluster_size: '512' },
      { seed: 3, operations: 300, clusterSizeBytes: 512, compressed: true },
    ));
  it('cluster_size=2M', () =>
    workloadCase(
      'cs2m',
      12 * MiB,
      { cluster_size: '2M' },
      { seed: 4, operations: 40, clusterSizeBytes: 2 * MiB, compressed: true },
    ));
  it('refcount_bits=1 (compressed clusters cannot share a host cluster)', () =>
    workloadCase(
      'rc1',
      4 * MiB,
      { refcount_bits: '1', cluster_size: '4096' },
      { seed: 5, operations: 200, clusterSizeBytes: 4096, compressed: true },
    ));
  it('refcount_bits=64, lazy_refcounts', () =>
    workloadCase(
      'rc64',
      4 * MiB,
      { refcount_bits: '64', lazy_refcounts: 'on' },
      { seed: 6, operations: 150, clusterSizeBytes: 65536, compressed: false },
    ));
  it('refcount_bits=2 with 512-byte clusters (refcount table growth)', () =>
    workloadCase(
      'rc2',
      6 * MiB,
      { refcount_bits: '2', cluster_size: '512' },
      { seed: 7, operations: 200, clusterSizeBytes: 512, compressed: false },
    ));
  it('compression_type=zstd', () =>
    workloadCase(
      'zstd',
      4 * MiB,
      { compression_type: 'zstd' },
      { seed: 8, operations: 120, clusterSizeBytes: 65536, compressed: true },
    ));
  it('over a qemu-made backing file (COW of partial clusters, v3)', () =>
    workloadCase(
      'cow3',
      6 * MiB,
      {},
      { seed: 9, operations: 150, clusterSizeBytes: 65536, compressed: true },
      true,
    ));
  it('over a qemu-made backing file (v2: writeZeroes writes zeros, discard exposes the backing)', () =>
    workloadCase(
      'cow2',
      6 * MiB,
      { compat: '0.10' },
      { seed: 10, operations: 150, clusterSizeBytes: 65536, compressed: false },
      true,
    ));
  it('extended_l2 (subclusters)', () =>
    workloadCase(
      'extl2',
      6 * MiB,
      { extended_l2: 'on', cluster_size: '32768' },
      { seed: 13, operations: 150, clusterSizeBytes: 32768, compressed: true },
    ));
  it('extended_l2 over a qemu-made backing file', () =>
    workloadCase(
      'extl2-cow',
      6 * MiB,
      { extended_l2: 'on' },
      { seed: 14, operations: 150, clusterSizeBytes: 65536, compressed: true },
      true,
    ));
  it('extended_l2 with preallocation=metadata over a backing file', () =>
    workloadCase(
      'extl2-prealloc',
      6 * MiB,
      { extended_l2: 'on', preallocation: 'metadata' },
      { seed: 15, operations: 120, clusterSizeBytes: 65536, compressed: false },
      true,
    ));
  it('preallocation=metadata, odd size', () =>
    workloadCase(
      'prealloc',
      3 * MiB + 3584,
      { preallocation: 'metadata' },
      { seed: 11, operations: 120, clusterSizeBytes: 65536, compressed: true },
    ));

  it('copies shared clusters and L2 tables on write when qemu took an internal snapshot', async () => {
    const path = join(dir, 'snapshot.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '4M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 2M', path]);
    run('qemu-img', ['snapshot', '-c', 'before', path]);
    const device = await openImage(path);
    await device.write(1000, new Uint8Array(100000).fill(2));
    await device.writeZeroes(1 << 20, 65536, { mayUnmap: true });
    await device.discard(3 << 19, 65536);
    await device.writeCompressed?.(3 << 20, new Uint8Array(65536).fill(3));
    await device.close();
    expect(runStatus('qemu-img', ['check', path]).stdout).toContain('No errors were found');
    const patterns = (file: string, format: string, checks: string[]): string =>
      runStatus('qemu-io', ['-f', format, '-r', ...checks.flatMap((check) => ['-c', check]), file]).stdout;
    const now = patterns(path, 'qcow2', [
      'read -P 1 0 1000',
      'read -P 2 1000 100000',
      'read -P 0 1048576 65536',
      'read -P 0 1572864 65536',
      'read -P 3 3M 64k',
    ]);
    expect(now).not.toContain('Pattern verification failed');
    const snapshotRaw = join(dir, 'snapshot.raw');
    run('qemu-img', ['convert', '-l', 'before', '-O', 'raw', path, snapshotRaw]);
    const then = patterns(snapshotRaw, 'raw', ['read -P 1 0 2M', 'read -P 0 2M 2M']);
    expect(then).not.toContain('Pattern verification failed');
  });

  it('fills a refcount block and grows the refcount table (512-byte clusters, 64-bit refcounts)', async () => {
    const path = join(dir, 'grow.qcow2');
    await createWithDriver('qcow2', path, 4 * MiB, { cluster_size: '512', refcount_bits: '64' });
    const device = await openImage(path);
    const data = seededBytes(4 * MiB, 12);
    for (let at = 0; at < data.length; at += 100_000)
      await device.write(at, data.subarray(at, Math.min(data.length, at + 100_000)));
    await device.close();
    const check = runStatus('qemu-img', ['check', path]);
    expect(check.stdout).toContain('No errors were found');
    const rawPath = join(dir, 'grow.raw');
    const reference = await NodeHostFile.open(rawPath, { readOnly: false, create: true, truncate: true });
    await reference.write(0, data);
    await reference.close();
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', rawPath, path]).status).toBe(0);
    const header = await readFile(path);
    // 4 MiB of 512-byte clusters with 64-bit refcounts needs > 64 refcount blocks: more than one table cluster.
    expect(header.readUInt32BE(56)).toBeGreaterThan(1);
  });
});

describe.skipIf(!HAS_QEMU)('qcow2 create matches qemu-img create byte for byte', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '1M']);
  });
  afterAll(async () => cleanup());

  const cases: Array<[string, number, Record<string, string>]> = [
    ['defaults', 1 << 20, {}],
    ['compat=0.10', 1 << 20, { compat: '0.10' }],
    ['cluster_size=512, 10M', 10 << 20, { cluster_size: '512' }],
    [
      'cluster_size=4096 (no feature table), zstd',
      100 << 20,
      { cluster_size: '4096', compression_type: 'zstd' },
    ],
    ['cluster_size=2M, 5G', 5 * 1024 ** 3, { cluster_size: '2M' }],
    ['size 1000 (rounded to 1024)', 1000, {}],
    ['size 0', 0, {}],
    ['refcount_bits=1, 1G', 1 << 30, { refcount_bits: '1' }],
    ['refcount_bits=64, lazy_refcounts', 1 << 30, { refcount_bits: '64', lazy_refcounts: 'on' }],
    ['1 TiB', 1024 ** 4, {}],
    ['preallocation=metadata', 3 << 20, { preallocation: 'metadata' }],
    [
      'preallocation=metadata, 4 KiB clusters, 200M (many refcount blocks)',
      200 << 20,
      { preallocation: 'metadata', cluster_size: '4096' },
    ],
    ['preallocation=falloc', 3 << 20, { preallocation: 'falloc' }],
    ['preallocation=full', 3 << 20, { preallocation: 'full' }],
    ['extended_l2, 1G', 1 << 30, { extended_l2: 'on' }],
    ['extended_l2, 16 KiB clusters', 1 << 30, { extended_l2: 'on', cluster_size: '16384' }],
    ['extended_l2, preallocation=metadata', 3 << 20, { extended_l2: 'on', preallocation: 'metadata' }],
  ];
  for (const [label, sizeBytes, options] of cases) {
    it(label, async () => {
      const slug = label.replace(/\W+/g, '-');
      const ours = join(dir, `ours-${slug}.qcow2`);
      const theirs = join(dir, `theirs-${slug}.qcow2`);
      const optionText = Object.entries(options)
        .map(([key, value]) => `${key}=${value}`)
        .join(',');
      run('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        ...(optionText ? ['-o', optionText] : []),
        theirs,
        String(sizeBytes),
      ]);
      await createWithDriver('qcow2', ours, sizeBytes, options);
      // cmp, not readFile: preallocated images are large (sparse) files.
      expect(runStatus('cmp', [ours, theirs])).toMatchObject({ status: 0, stdout: '' });
    });
  }

  it('with a backing file and backing format (header extension + name after the end marker)', async () => {
    for (const clusterSize of ['65536', '1024']) {
      const ours = join(dir, `ours-b${clusterSize}.qcow2`);
      const theirs = join(dir, `theirs-b${clusterSize}.qcow2`);
      run('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-b',
        'base.qcow2',
        '-F',
        'qcow2',
        '-o',
        `cluster_size=${clusterSize}`,
        theirs,
      ]);
      await createWithDriver(
        'qcow2',
        ours,
        1 << 20,
        { cluster_size: clusterSize },
        { file: 'base.qcow2', format: 'qcow2' },
      );
      expect((await readFile(ours)).equals(await readFile(theirs))).toBe(true);
    }
  });
});
