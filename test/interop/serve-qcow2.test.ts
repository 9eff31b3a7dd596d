// `vdisk serve` on qcow2 images and backing chains: maps (base:allocation and qemu:allocation-depth)
// equal qemu-nbd's for the same chain, qemu-io and nbdcopy writes that leave an image qemu-img check
// calls clean, and -s (writes go to a throw-away overlay) leaving the image untouched. Issue 5.

import { spawn } from 'node:child_process';
import { mkdtemp, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  missingTools,
  runOk,
  type ServerProcess,
  stopServersAndRemove,
  startQemuNbd,
  startVdiskServe,
} from './serve-helpers.ts';

const tools = ['qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo', 'nbdcopy'];
const missing = missingTools(tools, 'serve-qcow2 interop', 'qemu-utils libnbd-bin');

describe.skipIf(missing.length > 0)('vdisk serve: qcow2 images and chains', () => {
  let folder: string;
  let base: string;
  let top: string;
  const servers: ServerProcess[] = [];

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), 'vdisk-serve-qcow2-'));
    base = join(folder, 'base.qcow2');
    top = join(folder, 'top.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    await runOk('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x11 0 2M',
      '-c',
      'write -z 4M 1M',
      '-c',
      'write -P 0x22 8M 64k',
      base,
    ]);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 1M 2M', '-c', 'write -z 8M 64k', top]);
  });

  afterAll(async () => {
    await stopServersAndRemove(servers, folder);
  });

  it('maps a backing chain exactly as qemu-nbd does, and reads the same bytes', async () => {
    const vdisk = await startVdiskServe(['-t', '-r', '-f', 'qcow2', '-k', join(folder, 'v.sock'), top]);
    servers.push(vdisk);
    const qemu = await startQemuNbd(join(folder, 'q.sock'), ['-t', '-r', '-f', 'qcow2', '-A', top]);
    servers.push(qemu);
    expect(await runOk('nbdinfo', ['--map', vdisk.uri])).toBe(await runOk('nbdinfo', ['--map', qemu.uri]));
    expect(await runOk('nbdinfo', ['--map=qemu:allocation-depth', vdisk.uri])).toBe(
      await runOk('nbdinfo', ['--map=qemu:allocation-depth', qemu.uri]),
    );
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', vdisk.uri, qemu.uri])).toContain(
      'identical',
    );
    const viaVdisk = join(folder, 'via-vdisk.raw');
    await runOk('nbdcopy', [vdisk.uri, viaVdisk]);
    expect(await runOk('qemu-img', ['compare', '-F', 'qcow2', viaVdisk, top])).toContain('identical');
    await vdisk.stop();
    await qemu.stop();
  });

  it('takes writes from qemu-io and nbdcopy that leave a clean, identical image', async () => {
    const image = join(folder, 'rw.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    const source = join(folder, 'source.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', source, '16M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 5M', '-c', 'write -P 0x55 9M 3M', source]);
    const vdisk = await startVdiskServe([
      '-t',
      '-e',
      '4',
      '-f',
      'qcow2',
      '-k',
      join(folder, 'rw.sock'),
      image,
    ]);
    servers.push(vdisk);
    await runOk('nbdcopy', ['--connections=4', '--flush', source, vdisk.uri]);
    await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x66 14M 512k',
      '-c',
      'write -z 0 64k',
      '-c',
      'discard 9M 1M',
      vdisk.uri,
    ]);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 14M 512k', '-c', 'write -z 0 64k', source]);
    expect(await vdisk.stop()).toBe(0);
    await runOk('qemu-img', ['check', '-f', 'qcow2', image]);
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', source, image])).toContain(
      'identical',
    );
  });

  it('with -s keeps the image untouched while clients see their writes', async () => {
    const before = await readFile(top);
    const vdisk = await startVdiskServe(['-s', '-t', '-k', join(folder, 's.sock'), top]);
    servers.push(vdisk);
    const io = await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x77 0 1M',
      '-c',
      'read -P 0x77 0 1M',
      '-c',
      'read -P 0x33 1M 1M',
      vdisk.uri,
    ]);
    expect(io).not.toMatch(/Pattern verification failed/);
    expect(await vdisk.stop()).toBe(0);
    expect((await readFile(top)).equals(before)).toBe(true);
  });
  it('keeps a qcow2 image consistent when the writing client is killed mid-copy', async () => {
    const image = join(folder, 'killed.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
    const source = join(folder, 'big.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', source, '64M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x12 0 64M', source]);
    const vdisk = await startVdiskServe(['-t', '-f', 'qcow2', '-k', join(folder, 'killed.sock'), image]);
    servers.push(vdisk);
    const copy = spawn('nbdcopy', [source, vdisk.uri], { stdio: 'ignore' });
    // Listen from the start: a fast copy may end before the kill, and a late listener would wait forever.
    const exited = new Promise((resolve) => copy.once('exit', resolve));
    // Kill once the server has written some of it (the image grows), not after a fixed delay.
    for (let poll = 0; poll < 200 && copy.exitCode === null; poll++) {
      if ((await stat(image)).size > 4 * 1024 * 1024) break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    copy.kill('SIGKILL');
    await exited;
    expect(await vdisk.stop()).toBe(0);
    await runOk('qemu-img', ['check', '-f', 'qcow2', image]);
  });

  it('on SIGTERM mid-copy finishes what it received, flushes, and leaves a clean image', async () => {
    const image = join(folder, 'stopped.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
    const source = join(folder, 'big2.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', source, '64M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x34 0 64M', source]);
    const vdisk = await startVdiskServe(['-t', '-f', 'qcow2', '-k', join(folder, 'stopped.sock'), image]);
    servers.push(vdisk);
    const copy = spawn('nbdcopy', [source, vdisk.uri], { stdio: 'ignore' });
    const copied = new Promise((resolve) => copy.once('exit', resolve));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(await vdisk.stop()).toBe(0);
    await copied;
    await runOk('qemu-img', ['check', '-f', 'qcow2', image]);
  });
});
