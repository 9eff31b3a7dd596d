// qcow (v1) against qemu-img 7.2: plain and compressed (convert -c) images and backing chains qemu
// makes read byte-exact; images and overlays vdisk creates and writes compare equal in qemu-img
// (qemu has no check for qcow).

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  copyRawInto,
  createWithDriver,
  qemuRawSha256,
  run,
  runStatus,
  scratchDir,
  sha256Device,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'qcow interop');

describe.skipIf(!hasQemu)('qcow (v1) against qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  for (const compressed of [false, true]) {
    it(`reads a qemu-img ${compressed ? 'compressed' : 'plain'} image byte-exact`, async () => {
      const raw = await writeSeededRaw(dir, 'in.raw', 6 << 20, 21);
      // Compressible runs too, so -c stores some clusters compressed.
      const path = join(dir, 'q.qcow');
      run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 2M 300k', raw]);
      run('qemu-img', ['convert', '-O', 'qcow', raw, path]);
      // qemu-img 7.2's convert -c -O qcow fails silently; qemu-io writes compressed clusters instead.
      const writes = compressed
        ? [
            'write -c -P 0x41 0 4k',
            'write -c -P 0x42 12k 4k',
            'write -c -P 0x43 3M 4k',
            'write -c -P 0x44 5M 4k',
          ]
        : ['write -P 0x77 2100000 1000'];
      run('qemu-io', ['-f', 'qcow', ...writes.flatMap((command) => ['-c', command]), path]);
      const device = await openImage(path, { readOnly: true });
      try {
        expect(device.formatName).toBe('qcow');
        const map = await device.blockStatus(0, device.sizeBytes);
        if (compressed) expect(map.some((extent) => extent.compressed)).toBe(true);
        expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
        const info = JSON.parse(run('qemu-img', ['info', '--output=json', path]));
        expect((await device.info()).clusterSizeBytes).toBe(info['cluster-size']);
      } finally {
        await device.close();
      }
    });
  }

  it('reads a qemu-made backing chain', async () => {
    const base = join(dir, 'base.qcow');
    const top = join(dir, 'top.qcow');
    run('qemu-img', ['create', '-f', 'qcow', base, '3M']);
    run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x10 0 2M', base]);
    run('qemu-img', ['create', '-f', 'qcow', '-b', 'base.qcow', '-F', 'qcow', top]);
    run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x20 1000 3000', '-c', 'write -P 0x30 1M 4k', top]);
    const device = await openImage(top, { readOnly: true });
    try {
      expect((await device.info()).backingFilename).toBe('base.qcow');
      expect(await sha256Device(device)).toBe(await qemuRawSha256(top, dir));
    } finally {
      await device.close();
    }
  });

  it('writes images and overlays qemu-img compares equal', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 5 << 20, 22);
    const path = join(dir, 'v.qcow');
    await createWithDriver('qcow', path, 5 << 20);
    const device = await openImage(path);
    try {
      await copyRawInto(raw, device);
    } finally {
      await device.close();
    }
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow', raw, path]).status).toBe(0);

    const base = join(dir, 'base.raw');
    await writeFile(base, Buffer.alloc(1 << 20, 0x3c));
    const top = join(dir, 'top.qcow');
    await createWithDriver('qcow', top, 1 << 20, {}, { file: 'base.raw', format: 'raw' });
    const overlay = await openImage(top);
    try {
      await overlay.write(1234, new Uint8Array(7000).fill(1));
      expect(await sha256Device(overlay)).toBe(await qemuRawSha256(top, dir));
    } finally {
      await overlay.close();
    }
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', top]))['cluster-size']).toBe(512);
  });

  it('rewrites a compressed cluster with its old content around the new bytes', async () => {
    const path = join(dir, 'c.qcow');
    run('qemu-img', ['create', '-f', 'qcow', path, '1M']);
    // Compressed writes only land on unallocated clusters in qemu 7.2's qcow driver.
    run('qemu-io', ['-f', 'qcow', '-c', 'write -c -P 0x61 0 4k', path]);
    const device = await openImage(path);
    try {
      expect((await device.blockStatus(0, 4096))[0]?.compressed).toBe(true);
      await device.write(100, new Uint8Array(10).fill(0xee));
      expect((await device.blockStatus(0, 4096))[0]?.compressed).toBeUndefined();
    } finally {
      await device.close();
    }
    const verify = runStatus('qemu-io', [
      '-f',
      'qcow',
      '-c',
      'read -P 0x61 0 100',
      '-c',
      'read -P 0xee 100 10',
      '-c',
      'read -P 0x61 110 3986',
      path,
    ]);
    expect(verify.stdout).not.toContain('verification failed');
    expect(verify.status).toBe(0);
  });

  it('writes compressed clusters qemu-img reads (beyond qemu-img 7.2, whose convert -c -O qcow fails)', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 2 << 20, 24);
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 64k 200k', raw]);
    const path = join(dir, 'z.qcow');
    await createWithDriver('qcow', path, 2 << 20);
    const device = await openImage(path);
    const source = await openImage(raw, { format: 'raw', readOnly: true });
    try {
      const unit = device.compressedWriteUnitBytes!;
      const cluster = new Uint8Array(unit);
      for (let at = 0; at < device.sizeBytes; at += unit) {
        await source.read(at, cluster);
        if (cluster.some((byte) => byte !== 0)) await device.writeCompressed!(at, cluster);
      }
      const extents = await device.blockStatus(0, device.sizeBytes);
      expect(extents.some((extent) => extent.compressed)).toBe(true);
    } finally {
      await device.close();
      await source.close();
    }
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow', raw, path]).status).toBe(0);
  });
});
