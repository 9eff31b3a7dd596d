// VHDX against qemu-img 7.2 and Hyper-V samples: the samples give their documented hashes (the dirty
// 10 GiB one through vdisk's in-memory log replay, streamed); a read-write open replays the log on disk
// the same way `qemu-img check -r all` does; qemu-made images read byte-exact; vdisk-made dynamic and
// fixed images compare equal and check clean in qemu-img.

import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CheckReport, RepairMode } from '../../src/engine/formats/driver.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { openImage } from '../../src/engine/open.ts';
import {
  checkWithDriver,
  copyRawInto,
  createWithDriver,
  qemuRawSha256,
  run,
  runStatus,
  SAMPLES_DIR,
  scratchDir,
  sha256Device,
  unpackSample,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'VHDX interop with qemu');

const checkWith = (path: string, repair: RepairMode): Promise<CheckReport> =>
  checkWithDriver('vhdx', path, repair);

async function hashOf(path: string): Promise<string> {
  const device = await openImage(path, { readOnly: true });
  try {
    return await sha256Device(device);
  } finally {
    await device.close();
  }
}

describe('vhdx samples', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('reads the Hyper-V fixed sample', async () => {
    const path = join(SAMPLES_DIR, 'vhdx/fixed.vhdx');
    expect(await hashOf(path)).toBe('bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62');
    expect(await checkWith(path, 'none')).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('reads the Hyper-V dynamic samples', async () => {
    const dynamic = await unpackSample(join(SAMPLES_DIR, 'vhdx/dynamic.vhdx.gz'), dir);
    expect(await hashOf(dynamic)).toBe('8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac');
    const iotest = await unpackSample(join(SAMPLES_DIR, 'vhdx/iotest-dynamic-1G.vhdx.bz2'), dir);
    const device = await openImage(iotest, { readOnly: true });
    try {
      expect(device.sizeBytes).toBe(1073741824);
      expect((await device.info()).clusterSizeBytes).toBe(32 << 20);
      expect(await sha256Device(device)).toBe(
        'd3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478',
      );
    } finally {
      await device.close();
    }
  });

  it('refuses the differencing sample as qemu does', async () => {
    const path = await unpackSample(join(SAMPLES_DIR, 'vhdx/differencing.avhdx.gz'), dir);
    await expect(openImage(path, { readOnly: true, format: 'vhdx' })).rejects.toMatchObject({
      code: 'VDISK_ENOTSUP',
    });
  });

  it('replays the dirty log in memory on a read-only open (10 GiB, streamed)', async () => {
    const path = await unpackSample(join(SAMPLES_DIR, 'vhdx/iotest-dirtylog-10G-4M.vhdx.bz2'), dir);
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.sizeBytes).toBe(10737418240);
      expect(await sha256Device(device)).toBe(
        '179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f',
      );
    } finally {
      await device.close();
    }
    // The read-only open left the file alone: a check without repair still refuses it, as qemu does.
    await expect(checkWith(path, 'none')).rejects.toMatchObject({ code: 'VDISK_EFORMAT' });
  });

  it.skipIf(!hasQemu)('replays the dirty log on disk like qemu-img check -r all', async () => {
    const ours = await unpackSample(join(SAMPLES_DIR, 'vhdx/iotest-dirtylog-10G-4M.vhdx.bz2'), dir);
    const theirs = join(dir, 'qemu-repaired.vhdx');
    run('cp', ['--sparse=always', ours, theirs]);
    expect(runStatus('qemu-img', ['check', '-r', 'all', theirs]).status).toBe(0);
    const device = await openImage(ours);
    await device.close();
    expect(runStatus('qemu-img', ['check', ours]).status).toBe(0);
    expect(runStatus('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', ours, theirs]).status).toBe(0);
  });
});

describe.skipIf(!hasQemu)('vhdx against qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  for (const subformat of ['dynamic', 'fixed']) {
    it(`reads a qemu-img ${subformat} image byte-exact`, async () => {
      const raw = await writeSeededRaw(dir, 'in.raw', 6 << 20, 12);
      const path = join(dir, 'q.vhdx');
      run('qemu-img', ['convert', '-O', 'vhdx', '-o', `subformat=${subformat},block_size=1M`, raw, path]);
      run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x42 1000000 70000', path]);
      const device = await openImage(path, { readOnly: true });
      try {
        expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
        expect((await device.info()).clusterSizeBytes).toBe(
          JSON.parse(run('qemu-img', ['info', '--output=json', path]))['cluster-size'],
        );
      } finally {
        await device.close();
      }
    });
  }

  const writeCases: Record<string, string>[] = [
    { block_size: '1M' },
    { block_size: '2M', log_size: '2M', block_state_zero: 'off' },
    { subformat: 'fixed', block_size: '1M' },
  ];
  for (const options of writeCases) {
    it(`writes images qemu-img compares equal and checks clean (${JSON.stringify(options)})`, async () => {
      const raw = await writeSeededRaw(dir, 'in.raw', 6 << 20, 13);
      const path = join(dir, 'v.vhdx');
      await createWithDriver('vhdx', path, 6 << 20, options);
      const device = await openImage(path);
      try {
        await copyRawInto(raw, device);
      } finally {
        await device.close();
      }
      expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', raw, path]).status).toBe(0);
      const check = runStatus('qemu-img', ['check', path]);
      expect(check.stdout).toContain('No errors were found');
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', path]));
      expect(info['virtual-size']).toBe(6 << 20);
      expect(info['cluster-size']).toBe(Number.parseInt(options.block_size ?? '0', 10) << 20);
      expect(await checkWith(path, 'none')).toMatchObject({ corruptions: 0 });
    });
  }

  it('reports a truncated image as corrupt, like qemu check', async () => {
    const path = join(dir, 't.vhdx');
    run('qemu-img', ['create', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M']);
    run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 7 0 3M', path]);
    const file = await NodeHostFile.open(path, { readOnly: false });
    await file.truncate((await file.sizeBytes()) - (1 << 20));
    await file.close();
    expect(runStatus('qemu-img', ['check', path]).status).toBe(2);
    expect((await checkWith(path, 'none')).corruptions).toBeGreaterThan(0);
  });

  it('logs BAT updates: after a crash qemu-img check -r all replays the log, and so does vdisk', async () => {
    const raw = await writeSeededRaw(dir, 'in.raw', 4 << 20, 14);
    const path = join(dir, 'crash.vhdx');
    await createWithDriver('vhdx', path, 4 << 20, { block_size: '1M' });
    const device = await openImage(path);
    await copyRawInto(raw, device);
    await device.flush();
    // No close: the log still holds the BAT sectors of the flush. Simulate the in-place write never landing.
    const file = await NodeHostFile.open(path, { readOnly: false });
    await file.write(3 << 20, new Uint8Array(4096));
    await file.close();
    expect(runStatus('qemu-img', ['info', path]).status).toBe(1);
    expect(await hashOf(path)).toBe(await qemuRawSha256(raw, dir, 'raw'));
    const theirs = join(dir, 'qemu-replayed.vhdx');
    run('cp', [path, theirs]);
    expect(runStatus('qemu-img', ['check', '-r', 'all', theirs]).status).toBe(0);
    expect(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', raw, theirs]).status).toBe(0);
    await device.close().catch(() => undefined);
  });
});
