// Internal snapshot create, revert and delete (metadata-commit.ts) on each qcow2 layout whose tables they
// copy: tiny clusters with many refcount blocks, narrow and wide refcounts, extended L2 entries, v2, and
// a refcount table that must grow. After every step `qemu-img check` exits 0 (no corruption, no COPIED
// mismatch, no leak) and qemu reads the active image and every snapshot as they should be.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import { checkWithDriver, has, run, runStatus, scratchDir } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn(
    'SKIPPED snapshot-layouts-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)',
  );

/** qemu-img check and vdisk's own check find nothing: no corruption, no COPIED mismatch, no leak. */
async function expectNothingFound(path: string, step: string): Promise<void> {
  const ours = await checkWithDriver('qcow2', path);
  expect({ step, issues: ours.issues, leaks: ours.leaks, corruptions: ours.corruptions }).toEqual({
    step,
    issues: [],
    leaks: 0,
    corruptions: 0,
  });
  const check = runStatus('qemu-img', ['check', path]);
  expect({
    step,
    status: check.status,
    output: `${check.stdout}${check.stderr}`.match(/^(ERROR|Leaked).*$/gm),
  }).toEqual({ step, status: 0, output: null });
}

function snapshotNames(path: string): string[] {
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as {
    snapshots?: Array<{ name: string }>;
  };
  return (info.snapshots ?? []).map((snapshot) => snapshot.name);
}

const layouts = [
  {
    name: '512-byte clusters, 64-bit refcounts (a refcount block per 64 clusters)',
    options: 'cluster_size=512,refcount_bits=64',
  },
  {
    name: '512-byte clusters, 2-bit refcounts (three references at most)',
    options: 'cluster_size=512,refcount_bits=2',
    // Compressed clusters share host clusters: a snapshot would count one past 3 (qemu refuses too).
    compressed: false,
  },
  { name: '4 KiB clusters, 8-bit refcounts', options: 'cluster_size=4096,refcount_bits=8' },
  { name: 'extended L2 entries (16 KiB clusters)', options: 'cluster_size=16384,extended_l2=on' },
  { name: 'compat=0.10 (v2 header, no zero flag)', options: 'compat=0.10' },
];

describe.skipIf(!HAS_QEMU)('qcow2 snapshot changes on every table layout', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('snaplayouts'));
  });
  afterAll(async () => cleanup());

  async function content(path: string, snapshot?: string): Promise<Buffer> {
    const out = join(dir, 'content.raw');
    const select = snapshot === undefined ? [] : ['-l', `snapshot.name=${snapshot}`];
    run('qemu-img', ['convert', '-f', 'qcow2', ...select, '-O', 'raw', path, out]);
    return readFile(out);
  }

  for (const [index, layout] of layouts.entries()) {
    it(layout.name, async () => {
      const path = join(dir, `layout-${index}.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', layout.options, path, '2M']);
      run('qemu-io', [
        '-f',
        'qcow2',
        ...['-c', 'write -P 0x11 0 512k', '-c', 'write -z 512k 64k', '-c', 'write -P 0x22 1984k 64k'],
        ...(layout.compressed === false ? [] : ['-c', 'write -c -P 0x33 1M 64k']),
        path,
      ]);
      run('qemu-img', ['snapshot', '-c', 'a', path]);
      run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 128k 128k', path]);
      const a = await content(path, 'a');
      const now = await content(path);

      const device = await openImage(path);
      await device.snapshots?.create('b');
      await device.write(0, new Uint8Array(65536).fill(0x55));
      await device.flush();
      await expectNothingFound(path, 'create');
      expect(snapshotNames(path)).toEqual(['a', 'b']);
      expect((await content(path, 'a')).equals(a)).toBe(true);
      expect((await content(path, 'b')).equals(now)).toBe(true);
      const written = Buffer.from(now);
      written.fill(0x55, 0, 65536);
      expect((await content(path)).equals(written)).toBe(true);

      await device.snapshots?.apply('a');
      await expectNothingFound(path, 'apply');
      expect((await content(path)).equals(a)).toBe(true);
      await device.write(1 << 20, new Uint8Array(4096).fill(0x66));
      await device.snapshots?.delete('a');
      await expectNothingFound(path, 'delete a');
      await device.snapshots?.delete('b');
      await device.close();
      await expectNothingFound(path, 'delete b');
      expect(snapshotNames(path)).toEqual([]);
      const last = Buffer.from(a);
      last.fill(0x66, 1 << 20, (1 << 20) + 4096);
      expect((await content(path)).equals(last)).toBe(true);
    });
  }

  it('refuses a snapshot that would overflow a refcount, and leaves the image as it was', async () => {
    const path = join(dir, 'overflow.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=2', path, '1M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -c -P 0x33 0 64k', path]);
    expect(runStatus('qemu-img', ['snapshot', '-c', 'a', path]).status).toBe(1);
    const before = await readFile(path);
    const device = await openImage(path);
    await expect(device.snapshots?.create('a')).rejects.toMatchObject({
      code: 'VDISK_ECORRUPT',
      message: expect.stringMatching(/refcount of cluster \d+ would become 4 \(width 2 bits\)/),
    });
    await device.close();
    expect((await readFile(path)).equals(before)).toBe(true);
  });

  it('grows the refcount table when the copies run past what it covers', async () => {
    // 512-byte clusters with 64-bit refcounts: one table cluster names 64 blocks of 64 clusters, 2 MiB.
    const path = join(dir, 'grow.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', path, '4M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 1950k', path]);
    const header = await readFile(path);
    expect(header.readUInt32BE(56)).toBe(1);
    expect(header.length).toBeLessThan(2 << 20);
    const before = await content(path);
    const device = await openImage(path);
    await device.snapshots?.create('s');
    await device.close();
    expect((await readFile(path)).readUInt32BE(56)).toBe(2);
    await expectNothingFound(path, 'create');
    expect((await content(path, 's')).equals(before)).toBe(true);
    const again = await openImage(path);
    await again.snapshots?.delete('s');
    await again.close();
    await expectNothingFound(path, 'delete');
    expect((await content(path)).equals(before)).toBe(true);
  });

  it('copies more changed L2 tables than it keeps in memory (2 MiB clusters, 20 MiB of tables)', async () => {
    // Ten L2 tables of 2 MiB, one cluster written under each: past the 16 MiB of copies the commit
    // keeps, the rest are derived again when written.
    const path = join(dir, 'wide.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', path, '5T']);
    const at = (index: number): string => `${index * 512}G`;
    const writes = (pattern: number): string[] =>
      Array.from({ length: 10 }, (_, index) => ['-c', `write -P ${pattern + index} ${at(index)} 4k`]).flat();
    const reads = (pattern: number): string[] =>
      Array.from({ length: 10 }, (_, index) => ['-c', `read -P ${pattern + index} ${at(index)} 4k`]).flat();
    run('qemu-io', ['-f', 'qcow2', ...writes(0x10), path]);
    const device = await openImage(path);
    await device.snapshots?.create('s');
    for (let index = 0; index < 10; index++)
      await device.write(index * 512 * 2 ** 30, new Uint8Array(4096).fill(0x40 + index));
    await device.close();
    await expectNothingFound(path, 'create');
    expect(run('qemu-io', ['-f', 'qcow2', '-r', ...reads(0x40), path])).not.toMatch(/verification failed/);
    run('qemu-img', ['snapshot', '-a', 's', path]);
    await expectNothingFound(path, 'qemu reverts');
    expect(run('qemu-io', ['-f', 'qcow2', '-r', ...reads(0x10), path])).not.toMatch(/verification failed/);
    const again = await openImage(path);
    await again.snapshots?.delete('s');
    await again.close();
    await expectNothingFound(path, 'delete');
  });
});
