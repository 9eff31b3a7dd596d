// Internal snapshots through the engine API, checked by qemu-img: snapshots qemu made are listed and
// opened read-only by vdisk; snapshots vdisk creates, reverts to and deletes are seen by `qemu-img snapshot
// -l`, convert -l and qemu-img check exactly as qemu's own would be.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  createWithDriver,
  has,
  run,
  runStatus,
  scratchDir,
  sha256Device,
  sha256File,
} from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED snapshot-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

function qemuSnapshotNames(path: string): string[] {
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as {
    snapshots?: Array<{ id: string; name: string }>;
  };
  return (info.snapshots ?? []).map((snapshot) => `${snapshot.id}:${snapshot.name}`);
}

function expectClean(path: string): void {
  const check = runStatus('qemu-img', ['check', path]);
  expect(check.stderr + check.stdout).toContain('No errors were found');
}

describe.skipIf(!HAS_QEMU)('qcow2 internal snapshots', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
  });
  afterAll(async () => cleanup());

  it('lists and opens snapshots qemu-img made', async () => {
    const path = join(dir, 'qemu-snaps.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', path, '4M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 2M', path]);
    run('qemu-img', ['snapshot', '-c', 'first', path]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 1M 2M', path]);
    run('qemu-img', ['snapshot', '-c', 'second', path]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -z 0 4M', path]);
    const device = await openImage(path, { readOnly: true });
    try {
      const listed = await device.snapshots?.list();
      expect(listed?.map((snapshot) => `${snapshot.id}:${snapshot.name}`)).toEqual(qemuSnapshotNames(path));
      expect((await device.info()).snapshots?.map((snapshot) => snapshot.name)).toEqual(['first', 'second']);
      for (const name of ['first', 'second']) {
        const view = await device.snapshots?.open(name);
        if (!view) throw new Error('no snapshot view');
        const raw = join(dir, `qemu-${name}.raw`);
        run('qemu-img', ['convert', '-l', `snapshot.name=${name}`, '-O', 'raw', path, raw]);
        expect(await sha256Device(view)).toBe(await sha256File(raw));
        await view.close();
      }
    } finally {
      await device.close();
    }
  });

  it('creates, reverts to and deletes snapshots qemu-img then agrees with', async () => {
    const path = join(dir, 'ours.qcow2');
    await createWithDriver('qcow2', path, 4 << 20, {});
    const device = await openImage(path);
    await device.write(0, new Uint8Array(1 << 20).fill(1));
    await device.writeCompressed?.(2 << 20, new Uint8Array(65536).fill(7));
    const first = await device.snapshots?.create('first');
    expect(first).toMatchObject({ id: '1', name: 'first' });
    await device.write(500_000, new Uint8Array(1 << 20).fill(2));
    await device.discard(2 << 20, 65536);
    await device.snapshots?.create('second');
    await device.writeZeroes(0, 4 << 20, { mayUnmap: true });
    await device.close();

    expect(qemuSnapshotNames(path)).toEqual(['1:first', '2:second']);
    expectClean(path);
    const firstRaw = join(dir, 'first.raw');
    run('qemu-img', ['convert', '-l', 'snapshot.name=first', '-O', 'raw', path, firstRaw]);
    const firstBytes = await readFile(firstRaw);
    expect(firstBytes.subarray(0, 1 << 20).every((byte) => byte === 1)).toBe(true);
    expect(firstBytes.subarray(2 << 20, (2 << 20) + 65536).every((byte) => byte === 7)).toBe(true);

    const again = await openImage(path);
    await again.snapshots?.apply('first');
    const now = new Uint8Array(4 << 20);
    await again.read(0, now);
    expect(Buffer.from(now).equals(firstBytes)).toBe(true);
    await again.write(100, new Uint8Array(1000).fill(9));
    await again.snapshots?.delete('second');
    await again.close();
    expect(qemuSnapshotNames(path)).toEqual(['1:first']);
    expectClean(path);
    // qemu sees the reverted and rewritten content, and the remaining snapshot untouched.
    const current = join(dir, 'current.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, current]);
    const expected = Buffer.from(firstBytes);
    expected.fill(9, 100, 1100);
    expect((await readFile(current)).equals(expected)).toBe(true);
    run('qemu-img', ['convert', '-l', 'snapshot.name=first', '-O', 'raw', path, firstRaw]);
    expect((await readFile(firstRaw)).equals(firstBytes)).toBe(true);

    const last = await openImage(path);
    await last.snapshots?.delete('1');
    await last.close();
    expect(qemuSnapshotNames(path)).toEqual([]);
    expectClean(path);
    const leaks = JSON.parse(runStatus('qemu-img', ['check', '--output=json', path]).stdout) as {
      leaks?: number;
    };
    expect(leaks.leaks ?? 0).toBe(0);
  });

  it('snapshots of an extended_l2 image: create, write, revert, delete; qemu-img check clean', async () => {
    const path = join(dir, 'extl2-snap.qcow2');
    await createWithDriver('qcow2', path, 2 << 20, { extended_l2: 'on' });
    const device = await openImage(path);
    await device.write(10_000, new Uint8Array(100_000).fill(5));
    await device.snapshots?.create('s');
    await device.write(20_000, new Uint8Array(1000).fill(6));
    await device.flush();
    expectClean(path);
    await device.snapshots?.apply('s');
    const back = new Uint8Array(100_000);
    await device.read(10_000, back);
    expect(back.every((byte) => byte === 5)).toBe(true);
    await device.snapshots?.delete('s');
    await device.close();
    expectClean(path);
  });

  it('qemu-img can revert to and delete a snapshot vdisk created', async () => {
    const path = join(dir, 'handoff.qcow2');
    await createWithDriver('qcow2', path, 2 << 20, { compat: '0.10' });
    const device = await openImage(path);
    await device.write(4096, new Uint8Array(70000).fill(3));
    await device.snapshots?.create('mine');
    await device.write(4096, new Uint8Array(70000).fill(4));
    await expect(device.snapshots?.create('mine')).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await device.close();
    run('qemu-img', ['snapshot', '-a', 'mine', path]);
    expect(
      runStatus('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 3 4096 70000', path]).stdout,
    ).not.toContain('Pattern verification failed');
    run('qemu-img', ['snapshot', '-d', 'mine', path]);
    expectClean(path);
  });
});
