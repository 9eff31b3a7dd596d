// Resizing qcow2 images through the engine API: growing past the L1 table's reach moves it (qemu-img
// check clean, data kept, qemu-img info reports the new size); shrinking refuses to cut data unless
// allowed, then drops clusters and L2 tables past the end and trims the file.

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import { createWithDriver, has, run, runStatus, scratchDir, seededBytes } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img');
if (!HAS_QEMU) console.warn('SKIPPED resize-qcow2.test.ts: qemu-img not found (apt-get install qemu-utils)');

function expectClean(path: string): void {
  const check = runStatus('qemu-img', ['check', '--output=json', path]);
  const report = JSON.parse(check.stdout) as { corruptions?: number; leaks?: number };
  expect([check.status, report.corruptions ?? 0, report.leaks ?? 0]).toEqual([0, 0, 0]);
}

function virtualSize(path: string): number {
  return (JSON.parse(run('qemu-img', ['info', '--output=json', path])) as { 'virtual-size': number })[
    'virtual-size'
  ];
}

describe.skipIf(!HAS_QEMU)('qcow2 resize', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
  });
  afterAll(async () => cleanup());

  it('grows past the L1 table (512-byte clusters), keeping data; writes past the old end work', async () => {
    const path = join(dir, 'grow.qcow2');
    await createWithDriver('qcow2', path, 1 << 20, { cluster_size: '512' });
    const data = seededBytes(300_000, 4);
    const device = await openImage(path);
    await device.write(5000, data);
    const l1Before = (await readFile(path)).readBigUInt64BE(40);
    await device.resize?.(1 << 30, { shrink: false });
    expect(device.sizeBytes).toBe(1 << 30);
    await device.write((1 << 30) - 4096, new Uint8Array(4096).fill(0xee));
    await device.close();
    const header = await readFile(path, { flag: 'r' }).then((bytes) => bytes.subarray(0, 64));
    expect(header.readBigUInt64BE(40)).not.toBe(l1Before);
    expect(virtualSize(path)).toBe(1 << 30);
    expectClean(path);
    const check = runStatus('qemu-io', [
      '-f',
      'qcow2',
      '-r',
      '-c',
      `read -P 0xee ${(1 << 30) - 4096} 4096`,
      path,
    ]);
    expect(check.stdout).not.toContain('Pattern verification failed');
    const reread = await openImage(path, { readOnly: true });
    const back = new Uint8Array(data.length);
    await reread.read(5000, back);
    await reread.close();
    expect(Buffer.from(back).equals(Buffer.from(data))).toBe(true);
  });

  it('refuses to shrink over data unless allowed, then shrinks and trims the file', async () => {
    const path = join(dir, 'shrink.qcow2');
    await createWithDriver('qcow2', path, 64 << 20, {});
    const device = await openImage(path);
    await device.write(0, new Uint8Array(1 << 20).fill(1));
    await device.write(40 << 20, new Uint8Array(3 << 20).fill(2));
    await device.flush();
    const sizeBefore = (await stat(path)).size;
    await expect(device.resize?.(8 << 20, { shrink: true })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await expect(device.resize?.(8 << 20, { shrink: false })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await device.resize?.(8 << (20 + 0), { shrink: true, allowDataLoss: true });
    await device.close();
    expect(virtualSize(path)).toBe(8 << 20);
    expectClean(path);
    expect((await stat(path)).size).toBeLessThan(sizeBefore);
    const raw = join(dir, 'shrink.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, raw]);
    const bytes = await readFile(raw);
    expect(bytes.length).toBe(8 << 20);
    expect(bytes.subarray(0, 1 << 20).every((byte) => byte === 1)).toBe(true);
    expect(bytes.subarray(1 << 20).every((byte) => byte === 0)).toBe(true);
  });

  it('shrinks across L2 tables with 4 KiB clusters and grows back reading zeros', async () => {
    const path = join(dir, 'shrink-l2.qcow2');
    await createWithDriver('qcow2', path, 32 << 20, { cluster_size: '4096' });
    const device = await openImage(path);
    for (let at = 0; at < 32 << 20; at += 3 << 20)
      await device.write(at, new Uint8Array(8192).fill(at >>> 20));
    await device.resize?.(5 << 20, { shrink: true, allowDataLoss: true });
    await device.resize?.(32 << 20, { shrink: false });
    const tail = new Uint8Array(27 << 20);
    await device.read(5 << 20, tail);
    await device.close();
    expect(tail.every((byte) => byte === 0)).toBe(true);
    expectClean(path);
  });
});
