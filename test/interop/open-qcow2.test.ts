// Opening qcow2 images in states qemu leaves behind: a lazy_refcounts image whose writer was killed
// (dirty bit set, refcounts stale) is checked as qemu checks it and repaired on a writable open, as qemu
// does; info() reports qemu-img info's format-specific data, dirty flag and backing names.

import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findDriver } from '../../src/engine/formats/registry.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { openImage } from '../../src/engine/open.ts';
import { has, qemuRawSha256, run, runStatus, scratchDir, sha256Device } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED open-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

describe.skipIf(!HAS_QEMU)('qcow2 images in the states qemu leaves them', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let dirty: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    dirty = join(dir, 'dirty.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', dirty, '4M']);
    // qemu-io kills itself after writing: refcounts were never written, the dirty bit stays set.
    runStatus('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 7 0 1M',
      '-c',
      'write -P 8 2M 100k',
      '-c',
      'sigraise 9',
      dirty,
    ]);
    expect((await readFile(dirty)).readBigUInt64BE(72) & 1n).toBe(1n);
  });
  afterAll(async () => cleanup());

  it('a dirty image reads fine read-only, reports dirty, and check counts what qemu-img check counts', async () => {
    const device = await openImage(dirty, { readOnly: true });
    expect((await device.info()).dirty).toBe(true);
    expect(await sha256Device(device)).toBe(await qemuRawSha256(dirty, dir));
    await device.close();
    const file = await NodeHostFile.open(dirty, { readOnly: true });
    const report = await findDriver('qcow2').check?.(
      { path: dirty, file, readOnly: true, openBacking: undefined, options: {} },
      'none',
    );
    await file.close();
    const qemu = JSON.parse(runStatus('qemu-img', ['check', '--output=json', dirty]).stdout) as {
      corruptions?: number;
      leaks?: number;
    };
    expect({ corruptions: report?.corruptions, leaks: report?.leaks }).toEqual({
      corruptions: qemu.corruptions ?? 0,
      leaks: qemu.leaks ?? 0,
    });
    expect(report?.corruptions).toBeGreaterThan(0);
  });

  it('a writable open rebuilds the refcounts and clears the dirty bit; qemu-img check is then clean', async () => {
    const path = join(dir, 'dirty-rw.qcow2');
    await copyFile(dirty, path);
    const before = await qemuRawSha256(path, dir);
    const device = await openImage(path);
    expect((await device.info()).dirty).toBe(false);
    await device.write(3 << 20, new Uint8Array(70000).fill(9));
    await device.close();
    expect((await readFile(path)).readBigUInt64BE(72) & 1n).toBe(0n);
    const check = runStatus('qemu-img', ['check', path]);
    expect(check.stdout).toContain('No errors were found');
    const reread = await openImage(path, { readOnly: true });
    const head = new Uint8Array(3 << 20);
    await reread.read(0, head);
    await reread.close();
    const reference = join(dir, 'dirty-ref.raw');
    run('qemu-img', ['convert', '-O', 'raw', dirty, reference]);
    expect(Buffer.from(head).equals((await readFile(reference)).subarray(0, 3 << 20))).toBe(true);
    expect(before).toBe(await qemuRawSha256(dirty, dir));
  });

  it("info() carries qemu-img info's format-specific data for v2 and v3 images", async () => {
    for (const options of [
      'compat=0.10',
      'compat=1.1,lazy_refcounts=on,refcount_bits=64,compression_type=zstd',
      'cluster_size=4096',
    ]) {
      const path = join(dir, `info-${options.replace(/\W+/g, '-')}.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, path, '3M']);
      const qemu = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as {
        'virtual-size': number;
        'cluster-size': number;
        'dirty-flag': boolean;
        'format-specific': { type: string; data: Record<string, unknown> };
      };
      const device = await openImage(path, { readOnly: true });
      const info = await device.info();
      await device.close();
      expect(info.formatSpecific).toEqual(qemu['format-specific']);
      expect(Object.keys(info.formatSpecific?.data ?? {})).toEqual(Object.keys(qemu['format-specific'].data));
      expect([info.virtualSizeBytes, info.clusterSizeBytes, info.dirty]).toEqual([
        qemu['virtual-size'],
        qemu['cluster-size'],
        qemu['dirty-flag'],
      ]);
    }
  });
});
