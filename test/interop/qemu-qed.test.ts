// QED against qemu-img 7.2: images qemu-img makes (plain and with a backing file) read byte-exact by
// vdisk; images vdisk creates and writes compare equal in `qemu-img compare` and pass `qemu-img check`;
// vdisk's check agrees with qemu's on a clean and a corrupted image.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { openImage } from '../../src/engine/open.ts';
import {
  checkWithDriver,
  copyRawInto,
  createWithDriver,
  qemuRawSha256,
  run,
  runStatus,
  scratchDir,
  sha256Device,
  sha256File,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'QED interop');

describe.skipIf(!hasQemu)('qed against qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('reads a qemu-img converted image byte-exact, with qemu info fields', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 8 << 20, 3);
    const path = join(dir, 'q.qed');
    run('qemu-img', ['convert', '-O', 'qed', '-o', 'cluster_size=4096,table_size=2', raw, path]);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 0xab 5000 9000', '-c', 'write -z 1048576 65536', path]);
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.formatName).toBe('qed');
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
      const qemuInfo = JSON.parse(run('qemu-img', ['info', '--output=json', path]));
      const info = await device.info();
      expect(info.virtualSizeBytes).toBe(qemuInfo['virtual-size']);
      expect(info.clusterSizeBytes).toBe(qemuInfo['cluster-size']);
      expect(info.dirty).toBe(qemuInfo['dirty-flag']);
    } finally {
      await device.close();
    }
  });

  it('reads through a backing file as qemu does', async () => {
    const base = join(dir, 'base.qed');
    const top = join(dir, 'top.qed');
    run('qemu-img', ['create', '-f', 'qed', base, '4M']);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 100k', base]);
    run('qemu-img', ['create', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', top]);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 0x33 512k 4k', '-c', 'write -z 3M 64k', top]);
    const device = await openImage(top, { readOnly: true });
    try {
      expect(device.backing?.formatName).toBe('qed');
      expect(await sha256Device(device)).toBe(await qemuRawSha256(top, dir));
      expect((await device.info()).backingFilename).toBe('base.qed');
    } finally {
      await device.close();
    }
  });

  it('writes images that qemu-img compares equal and checks clean', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 6 << 20, 9);
    const path = join(dir, 'v.qed');
    await createWithDriver('qed', path, 6 << 20, { cluster_size: '8192', table_size: '2' });
    const device = await openImage(path);
    try {
      await copyRawInto(raw, device);
      await device.writeZeroes(2 << 20, 100_000);
      await device.write(2 << 20, new Uint8Array(100).fill(7));
    } finally {
      await device.close();
    }
    const expected = join(dir, 'expected.raw');
    run('cp', [raw, expected]);
    const patch = await NodeHostFile.open(expected, { readOnly: false });
    await patch.write(2 << 20, new Uint8Array(100_000));
    await patch.write(2 << 20, new Uint8Array(100).fill(7));
    await patch.close();
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qed', expected, path]).status).toBe(0);
    const check = runStatus('qemu-img', ['check', path]);
    expect(check.stdout).toContain('No errors were found');
    expect(check.status).toBe(0);
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', path]))['cluster-size']).toBe(8192);
  });

  it('creates overlays on a backing file that qemu reads identically', async () => {
    const base = join(dir, 'base.raw');
    await writeFile(base, Buffer.alloc(2 << 20, 0x5a));
    const top = join(dir, 'top.qed');
    await createWithDriver('qed', top, 2 << 20, {}, { file: 'base.raw', format: 'raw' });
    const device = await openImage(top);
    try {
      await device.write(70_000, new Uint8Array(3000).fill(1));
      expect(await sha256Device(device)).toBe(await qemuRawSha256(top, dir));
    } finally {
      await device.close();
    }
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', top]));
    expect(info['backing-filename']).toBe('base.raw');
    expect(info['backing-filename-format']).toBe('raw');
    expect(runStatus('qemu-img', ['check', top]).status).toBe(0);
    const expected = join(dir, 'expected.raw');
    run('cp', [base, expected]);
    const patch = await NodeHostFile.open(expected, { readOnly: false });
    await patch.write(70_000, new Uint8Array(3000).fill(1));
    await patch.close();
    expect(await sha256File(expected)).toBe(await qemuRawSha256(top, dir));
  });

  it('checks like qemu: clean, then a corrupted L2 entry', async () => {
    const path = join(dir, 'c.qed');
    run('qemu-img', ['create', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', path, '1M']);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 1 0 8k', path]);
    const checkFile = () => checkWithDriver('qed', path);
    const clean = await checkFile();
    expect(clean.corruptions + clean.leaks).toBe(0);
    expect(clean.allocatedClusters).toBe(2);
    expect(clean.totalClusters).toBe(
      JSON.parse(run('qemu-img', ['check', '--output=json', path]))['total-clusters'],
    );
    // The L1 table sits at 4096; point entry 0 of the L2 table it names past EOF.
    const file = await NodeHostFile.open(path, { readOnly: false });
    const entry = Buffer.alloc(8);
    await file.read(4096, entry);
    const l2Offset = Number(entry.readBigUInt64LE());
    entry.writeBigUInt64LE(1n << 40n);
    await file.write(l2Offset, entry);
    await file.close();
    const corrupt = await checkFile();
    expect(corrupt.corruptions).toBe(1);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(2);
    const qemuCopy = join(dir, 'qemu-repaired.qed');
    run('cp', [path, qemuCopy]);
    runStatus('qemu-img', ['check', '-r', 'all', qemuCopy]);
    expect(await checkWithDriver('qed', path, 'all')).toMatchObject({ corruptions: 0, corruptionsFixed: 1 });
    // The cluster the bad entry used to name is now a leak, for qemu's repair as for vdisk's.
    expect(runStatus('qemu-img', ['check', path]).status).toBe(
      runStatus('qemu-img', ['check', qemuCopy]).status,
    );
  });

  it('grows like qemu-img resize and refuses to shrink', async () => {
    const path = join(dir, 'r.qed');
    await createWithDriver('qed', path, 1 << 20);
    const device = await openImage(path);
    try {
      await device.write(4096, new Uint8Array(512).fill(3));
      await device.resize!(3 << 20, { shrink: false });
      expect(device.sizeBytes).toBe(3 << 20);
      await device.write((3 << 20) - 512, new Uint8Array(512).fill(4));
      await expect(device.resize!(1 << 20, { shrink: true })).rejects.toMatchObject({
        code: 'VDISK_ENOTSUP',
      });
    } finally {
      await device.close();
    }
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', path]))['virtual-size']).toBe(3 << 20);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
    const verify = runStatus('qemu-io', [
      '-f',
      'qed',
      '-c',
      'read -P 3 4096 512',
      '-c',
      `read -P 4 ${(3 << 20) - 512} 512`,
      path,
    ]);
    expect(verify.stdout).not.toContain('verification failed');
  });

  it('serializes concurrent writes: no cluster or L2 table is allocated twice', async () => {
    const path = join(dir, 'p.qed');
    await createWithDriver('qed', path, 4 << 20, { cluster_size: '4096', table_size: '2' });
    const expected = Buffer.alloc(4 << 20);
    const device = await openImage(path);
    try {
      const writes: Promise<void>[] = [];
      for (let i = 0; i < 96; i++) {
        const offset = (i * 37_123) % ((4 << 20) - 3000);
        const data = new Uint8Array(3000).fill((i % 250) + 1);
        expected.set(data, offset);
        writes.push(device.write(offset, data));
      }
      await Promise.all(writes);
    } finally {
      await device.close();
    }
    const expectedPath = join(dir, 'expected.raw');
    await writeFile(expectedPath, expected);
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qed', expectedPath, path]).status).toBe(0);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('zeroes whole clusters over a backing file with zero-cluster entries, as qemu reads them', async () => {
    const base = join(dir, 'base.raw');
    await writeFile(base, Buffer.alloc(1 << 20, 0x77));
    const top = join(dir, 'z.qed');
    await createWithDriver(
      'qed',
      top,
      1 << 20,
      { cluster_size: '4096' },
      { file: 'base.raw', format: 'raw' },
    );
    const device = await openImage(top);
    let sizeBefore = 0;
    try {
      sizeBefore = (await import('node:fs')).statSync(top).size;
      await device.writeZeroes(8192, 3 * 4096 + 100);
    } finally {
      await device.close();
    }
    const expected = Buffer.alloc(1 << 20, 0x77);
    expected.fill(0, 8192, 8192 + 3 * 4096 + 100);
    const expectedPath = join(dir, 'expected.raw');
    await writeFile(expectedPath, expected);
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qed', expectedPath, top]).status).toBe(0);
    expect(runStatus('qemu-img', ['check', top]).status).toBe(0);
    // Three zero clusters plus one partial data cluster: one L2 table (4 clusters) and one data cluster.
    expect((await import('node:fs')).statSync(top).size - sizeBefore).toBe(5 * 4096);
  });
});
