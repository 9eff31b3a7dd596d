// vdisk's info (with --backing-chain), map and check print what qemu-img 7.2 prints for qcow2 images
// and backing chains made by qemu-img itself: JSON byte for byte, human forms, exit statuses.

import { copyFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import { expectSameAsQemuImg, hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
const HAS_QCOW2 = formatRegistry.some((driver) => driver.name === 'qcow2');
warnMissing('qemu-img', 'cli-json-qcow2.test.ts');
if (!HAS_QCOW2) console.warn('SKIPPED cli-json-qcow2.test.ts: no qcow2 driver is registered yet');

describe.skipIf(!HAS_QEMU || !HAS_QCOW2)('vdisk on qcow2 chains, beside qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let base: string;
  let top: string;
  let overRaw: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-qcow2'));
    base = join(dir, 'base.qcow2');
    top = join(dir, 'top.qcow2');
    overRaw = join(dir, 'over-raw.qcow2');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
    mustRun('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 1 0 64k',
      '-c',
      'write -z 1M 64k',
      '-c',
      'write -P 3 3M 128k',
      base,
    ]);
    // Relative backing names, resolved against the overlay's folder.
    mustRun(
      'qemu-img',
      ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '6M'],
      dir,
    );
    mustRun('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 2 32k 64k',
      '-c',
      'write -z 2M 64k',
      '-c',
      'write -P 4 5M 64k',
      top,
    ]);
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', 'base.raw', '2M'], dir);
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 5 256k 8k', join(dir, 'base.raw')]);
    mustRun(
      'qemu-img',
      [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-b',
        'base.raw',
        '-F',
        'raw',
        '-o',
        'cluster_size=4096',
        'over-raw.qcow2',
      ],
      dir,
    );
  });
  afterAll(async () => cleanup?.());

  it('info --output=json and human, one image and the whole chain', async () => {
    for (const path of [base, top, overRaw]) {
      await expectSameAsQemuImg(['info', '--output=json', path]);
      await expectSameAsQemuImg(['info', path]);
      await expectSameAsQemuImg(['info', '--backing-chain', '--output=json', path]);
      await expectSameAsQemuImg(['info', '--backing-chain', path]);
    }
  });

  it('map --output=json across the chain: depth, present, zero, data, offset', async () => {
    for (const path of [base, top, overRaw]) await expectSameAsQemuImg(['map', '--output=json', path]);
    for (const path of [base, top, overRaw]) await expectSameAsQemuImg(['map', path]);
  });

  it('measure -O qcow2 for sizes, options and a source image', async (context) => {
    const probe = await vdisk(['measure', '--output=json', '-O', 'qcow2', '--size', '1G']);
    if (JSON.parse(probe.stdout).required === 0) {
      console.warn(
        'SKIPPED qcow2 measure comparison: the qcow2 driver measure still answers 0 (not implemented yet)',
      );
      context.skip();
    }
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'qcow2', '--size', '1G']);
    await expectSameAsQemuImg(['measure', '-O', 'qcow2', '-o', 'cluster_size=4k', '--size', '100M']);
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'qcow2', base]);
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'qcow2', top]);
    await expectSameAsQemuImg(['measure', '-O', 'qcow2', base]);
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'raw', top]);
  });

  it('map of compressed clusters: JSON without offsets, and the human table refuses as qemu-img does', async () => {
    const packed = join(dir, 'packed.qcow2');
    mustRun('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', join(dir, 'base.raw'), packed]);
    for (const args of [
      ['map', '--output=json', packed],
      ['map', packed],
    ]) {
      const qemu = tool('qemu-img', args);
      const ours = await vdisk(args);
      expect({
        code: ours.code,
        stdout: ours.stdout,
        stderr: ours.stderr.replace(/^vdisk:/gm, 'qemu-img:'),
      }).toEqual({ code: qemu.code, stdout: qemu.stdout, stderr: qemu.stderr });
    }
  });

  it('check reports a leaked cluster as qemu-img does (exit 3), and -r leaks repairs it', async () => {
    // A fresh 64 KiB-cluster image keeps its refcount block at 0x20000: give cluster 10 a refcount
    // nothing references, and make the file long enough to hold it.
    const leaky = join(dir, 'leaky.qcow2');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', leaky, '4M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64k', leaky]);
    const handle = await open(leaky, 'r+');
    await handle.write(Buffer.from([0, 1]), 0, 2, 0x20000 + 10 * 2);
    await handle.truncate(11 * 65536);
    await handle.close();
    for (const args of [
      ['check', leaky],
      ['check', '--output=json', leaky],
    ]) {
      const qemu = tool('qemu-img', args);
      const ours = await vdisk(args);
      expect({ code: ours.code, stdout: ours.stdout, stderr: ours.stderr }).toEqual({
        code: 3,
        stdout: qemu.stdout,
        stderr: qemu.stderr,
      });
    }
    const [forQemu, forUs] = [join(dir, 'leaky-q.qcow2'), join(dir, 'leaky-v.qcow2')];
    await copyFile(leaky, forQemu);
    await copyFile(leaky, forUs);
    const qemu = tool('qemu-img', ['check', '-r', 'leaks', forQemu]);
    const ours = await vdisk(['check', '-r', 'leaks', forUs]);
    expect({ code: ours.code, stdout: ours.stdout }).toEqual({ code: qemu.code, stdout: qemu.stdout });
    expect(tool('qemu-img', ['check', forUs]).code).toBe(0);
  });

  it('check --output=json and human on clean images', async () => {
    for (const path of [base, top]) {
      await expectSameAsQemuImg(['check', '--output=json', path]);
      await expectSameAsQemuImg(['check', path]);
    }
  });
});
