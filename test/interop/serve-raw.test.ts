// `vdisk serve` on raw images, checked with qemu's and libnbd's own clients: qemu-img info/compare,
// qemu-io writes, nbdinfo maps identical to qemu-nbd's for the same file, nbdcopy both ways
// (4 connections), and qemu-nbd's process behaviour (exit after the last client, SIGTERM, -r, --fork).

import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, run } from '../unit/nbd/tools.ts';
import {
  missingTools,
  runOk,
  type ServerProcess,
  stopServersAndRemove,
  startQemuNbd,
  startVdiskServe,
  VDISK_BIN,
} from './serve-helpers.ts';

const tools = ['qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo', 'nbdcopy'];
const missing = missingTools(tools, 'serve-raw interop', 'qemu-utils libnbd-bin');

describe.skipIf(missing.length > 0)('vdisk serve: raw images with qemu and libnbd clients', () => {
  let folder: string;
  let image: string;
  const servers: ServerProcess[] = [];

  async function serve(args: string[]): Promise<ServerProcess> {
    const server = await startVdiskServe(args);
    servers.push(server);
    return server;
  }

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), 'vdisk-serve-raw-'));
    image = join(folder, 'disk.raw');
    await runOk('qemu-img', ['create', '-f', 'raw', image, '8M']);
    await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x11 0 64k',
      '-c',
      'write -P 0x22 1M 1M',
      '-c',
      'write -P 0x33 5000k 12k',
      image,
    ]);
  });

  afterAll(async () => {
    await stopServersAndRemove(servers, folder);
  });

  it('reports the same size, content and allocation map as qemu-nbd for the same file', async () => {
    const socket = join(folder, 'vdisk.sock');
    const vdisk = await serve(['-t', '-r', '-f', 'raw', '-k', socket, image]);
    const qemu = await startQemuNbd(join(folder, 'qemu.sock'), ['-t', '-r', '-f', 'raw', '-A', image]);
    servers.push(qemu);
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', vdisk.uri])) as {
      'virtual-size': number;
    };
    expect(info['virtual-size']).toBe(8 * 1024 * 1024);
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, vdisk.uri])).toContain(
      'identical',
    );
    const converted = join(folder, 'converted.qcow2');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', vdisk.uri, converted]);
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', image, converted])).toContain(
      'identical',
    );
    // convert skips what block status calls zero: the copy allocates what a copy via qemu-nbd does.
    const viaQemu = join(folder, 'via-qemu.qcow2');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', qemu.uri, viaQemu]);
    expect(await runOk('qemu-img', ['map', '--output=json', converted])).toBe(
      await runOk('qemu-img', ['map', '--output=json', viaQemu]),
    );
    expect(await runOk('nbdinfo', ['--map', vdisk.uri])).toBe(await runOk('nbdinfo', ['--map', qemu.uri]));
    expect(await runOk('nbdinfo', ['--map=qemu:allocation-depth', vdisk.uri])).toBe(
      await runOk('nbdinfo', ['--map=qemu:allocation-depth', qemu.uri]),
    );
    expect(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', vdisk.uri])).toBe(
      await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', qemu.uri]),
    );
    expect((await run('nbdinfo', ['--is', 'readonly', vdisk.uri])).code).toBe(0);
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', vdisk.uri]);
    expect(write.stdout + write.stderr).toMatch(/Operation not permitted|read-only|Permission denied/i);
    await vdisk.stop();
    await qemu.stop();
  });

  it('takes qemu-io writes over TCP that land in the file, then exits after the last client', async () => {
    const vdisk = await serve(['-f', 'raw', '-p', '0', image]);
    expect(vdisk.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/);
    await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0xab 2M 64k',
      '-c',
      'write -z 1M 4k',
      '-c',
      'flush',
      '-c',
      'read -P 0xab 2M 64k',
      vdisk.uri,
    ]);
    // Not persistent (no -t): qemu-nbd's behaviour is to exit once the client has gone.
    expect(await vdisk.exited).toBe(0);
    const check = await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0xab 2M 64k',
      '-c',
      'read -P 0 1M 4k',
      '-c',
      'read -P 0x22 1028k 4k',
      image,
    ]);
    expect(check).not.toMatch(/Pattern verification failed/);
  });

  it('copies byte-exact with nbdcopy over 4 connections, both ways', async () => {
    const socket = join(folder, 'copy.sock');
    const vdisk = await serve([
      '-t',
      '-e',
      '4',
      '-x',
      'data',
      '-D',
      'copy target',
      '-f',
      'raw',
      '-k',
      socket,
      image,
    ]);
    expect(vdisk.uri).toBe(`nbd+unix:///data?socket=${socket}`);
    const listed = JSON.parse(await runOk('nbdinfo', ['--list', '--json', vdisk.uri])) as {
      exports: { 'export-name': string; description: string }[];
    };
    expect(listed.exports.map((entry) => [entry['export-name'], entry.description])).toEqual([
      ['data', 'copy target'],
    ]);
    expect((await run('nbdinfo', ['--can', 'multi-conn', vdisk.uri])).code).toBe(0);
    const copy = join(folder, 'copy.raw');
    await runOk('nbdcopy', ['--connections=4', vdisk.uri, copy]);
    expect((await readFile(copy)).equals(await readFile(image))).toBe(true);
    const source = join(folder, 'source.raw');
    await runOk('qemu-img', ['create', '-f', 'raw', source, '8M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 3M', '-c', 'write -P 0x6d 6M 1M', source]);
    await runOk('nbdcopy', ['--connections=4', '--flush', source, vdisk.uri]);
    expect(await vdisk.stop()).toBe(0);
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, image])).toContain(
      'identical',
    );
    expect(existsSync(socket)).toBe(false);
  });

  it('detaches with --fork once listening and removes its pid file on SIGTERM', async () => {
    const socket = join(folder, 'fork.sock');
    const pidFile = join(folder, 'serve.pid');
    const started = await run(process.execPath, [
      VDISK_BIN,
      'serve',
      '--fork',
      '-t',
      '--pid-file',
      pidFile,
      '-f',
      'raw',
      '-k',
      socket,
      image,
    ]);
    expect(started.code).toBe(0);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    try {
      expect(await runOk('nbdinfo', ['--size', `nbd+unix:///?socket=${socket}`])).toBe(
        `${8 * 1024 * 1024}\n`,
      );
    } finally {
      process.kill(pid, 'SIGTERM');
    }
    const deadline = Date.now() + 10_000;
    while (existsSync(pidFile) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50));
    expect(existsSync(pidFile)).toBe(false);
  });
  it.skipIf(!hasTool('sfdisk'))('serves one partition with -P, reads and writes confined to it', async () => {
    const disk = join(folder, 'parted.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', disk, '16M']);
    const sfdisk = await run('sh', [
      '-c',
      `printf 'label: gpt\\nstart=2048, size=4096\\nstart=8192, size=16384\\n' | sfdisk -q ${disk}`,
    ]);
    expect(sfdisk.code).toBe(0);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 4M 1M', disk]);
    const vdisk = await serve(['-t', '-P', '2', '-f', 'raw', '-k', join(folder, 'part.sock'), disk]);
    expect(await runOk('nbdinfo', ['--size', vdisk.uri])).toBe(`${8 * 1024 * 1024}\n`);
    const io = await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0x99 0 1M',
      '-c',
      'write -P 0x42 7M 1M',
      vdisk.uri,
    ]);
    expect(io).not.toMatch(/Pattern verification failed/);
    expect(await vdisk.stop()).toBe(0);
    expect(
      await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 11M 1M', '-c', 'read -P 0 12M 3M', disk]),
    ).not.toMatch(/Pattern verification failed/);
  });

  it('punches holes in the file for TRIM and zero writes with --discard=unmap --detect-zeroes=unmap', async () => {
    const disk = join(folder, 'sparse.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', disk, '8M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 8M', disk]);
    const vdisk = await serve([
      '-t',
      '--discard=unmap',
      '--detect-zeroes=unmap',
      '-f',
      'raw',
      '-k',
      join(folder, 'sparse.sock'),
      disk,
    ]);
    await runOk('qemu-io', [
      '-f',
      'raw',
      '-c',
      'discard 1M 1M',
      '-c',
      'write -P 0 4M 1M',
      '-c',
      'write -z -u 6M 1M',
      vdisk.uri,
    ]);
    expect(await vdisk.stop()).toBe(0);
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', disk])) as {
      start: number;
      length: number;
      data: boolean;
    }[];
    const holes = map.filter((extent) => !extent.data).map((extent) => [extent.start, extent.length]);
    const MIB = 1024 * 1024;
    expect(holes).toEqual([
      [MIB, MIB],
      [4 * MIB, MIB],
      [6 * MIB, MIB],
    ]);
  });
});
