// The attach/detach sequencing, replayed against transcripts recorded in the node tier's VM (a real
// kernel's answers to nbd-client, kpartx, blkid, mkfs, mount), plus scripted failure paths: rollback
// when kpartx maps nothing, retry when another client takes the free device, read-only refusals.
// Re-record after changing the sequence: VDISK_NODE_TRANSCRIPT_DIR=$PWD/test/unit/agent/attach/transcripts
//   npx vitest run --project node test/node/attach.test.ts -t "MBR|SIGKILL"

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAttachArgv } from '../../../../src/agent/attach/config.ts';
import { serveInProcess } from '../../../../src/agent/attach/serve.ts';
import { type AttachDeps, attach, detach } from '../../../../src/agent/attach/sequence.ts';
import { openImage } from '../../../../src/engine/open.ts';
import { applyLayout, readPartitionTable } from '../../../../src/engine/partition/index.ts';
import { fail, ok, ReplayRunner, ScriptedRunner } from './replay-runner.ts';

const MiB = 1024 * 1024;
const noSleep = async () => undefined;

function recordedImagePath(runner: ReplayRunner): string {
  const tee = runner.entries.find((entry) => entry.command === 'tee');
  return (JSON.parse(tee?.input ?? '{}') as { imagePath: string }).imagePath;
}

const GPT_LAYOUT = {
  table: 'gpt',
  partitions: [
    { size: '96Mi', filesystem: 'ext4', label: 'root' },
    { filesystem: 'vfat', label: 'efi', type: 'efi' },
  ],
} as const;

describe('attach sequence', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vdisk-attach-unit-'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  function argv(image: string, id: string, mountPath: string): string[] {
    return [
      '--image',
      image,
      '--id',
      id,
      '--socket',
      join(dir, 'nbd.sock'),
      '--connect',
      '10.0.2.100:10809',
      '--timeout-seconds',
      '20',
      '--layout',
      JSON.stringify({ table: 'mbr', partitions: [{ filesystem: 'ext4', label: 'data' }] }),
      '--mount',
      `1:${mountPath}`,
    ];
  }

  function blankImage(name: string, sizeBytes: number): string {
    const image = join(dir, name);
    execFileSync('truncate', ['-s', String(sizeBytes), image]);
    return image;
  }

  async function replay(transcript: string, image: string, args: string[]) {
    const runner = ReplayRunner.load(new URL(`./transcripts/${transcript}.json`, import.meta.url));
    const recorded = recordedImagePath(runner);
    const replayWithPaths = new ReplayRunner(runner.entries, [
      [recorded, image],
      [dirname(recorded), dir],
    ]);
    const deps: AttachDeps = { runner: replayWithPaths, serve: serveInProcess, sleep: noSleep };
    const attachment = await attach(parseAttachArgv(args), deps);
    const attached = structuredClone(attachment.report);
    const detached = await detach(attachment, deps);
    return { runner: replayWithPaths, attached, detached };
  }

  it('first attach: lays out the blank image in-process, binds nbd0, maps, makes ext4, mounts; detach undoes all', async () => {
    const image = blankImage('first.img', 4096 * MiB);
    const { runner, attached, detached } = await replay(
      'attach-mbr-ext4-first',
      image,
      argv(image, 'mbr', '/mnt/data'),
    );
    expect(runner.finished).toBe(true);
    expect(attached).toMatchObject({
      phase: 'Attached',
      device: '/dev/nbd0',
      layoutApplied: true,
      filesystemsCreated: [{ partition: 1, filesystem: 'ext4' }],
      partitions: [{ number: 1, name: 'nbd0p1', start: MiB, size: 4095 * MiB, mountPath: '/mnt/data' }],
      mounts: [{ partition: 1, path: '/mnt/data', source: '/dev/mapper/nbd0p1', options: '' }],
    });
    expect(detached.phase).toBe('Detached');
    const device = await openImage(image, { readOnly: true });
    expect((await readPartitionTable(device, image))?.partitions).toMatchObject([
      { startBytes: MiB, sizeBytes: 4095 * MiB, type: '83' },
    ]);
    await device.close();
  });

  it('later attach: keeps the existing table and filesystem (blkid finds ext4, no mkfs)', async () => {
    const image = blankImage('again.img', 4096 * MiB);
    const device = await openImage(image);
    await applyLayout(device, { table: 'mbr', partitions: [{ filesystem: 'ext4' }] }, image);
    await device.close();
    const { runner, attached } = await replay(
      'attach-mbr-ext4-again',
      image,
      argv(image, 'mbr', '/mnt/data'),
    );
    expect(runner.finished).toBe(true);
    expect(attached).toMatchObject({ layoutApplied: false, filesystemsCreated: [], recovered: [] });
  });

  it('restart after kill -9: unmounts, unmaps and disconnects the stale nbd0 from the state file, then attaches', async () => {
    const image = blankImage('crash.img', 128 * MiB);
    const device = await openImage(image);
    await applyLayout(device, { table: 'mbr', partitions: [{ filesystem: 'ext4' }] }, image);
    await device.close();
    const { runner, attached } = await replay(
      'attach-recover-after-kill',
      image,
      argv(image, 'crash', '/mnt/crash'),
    );
    expect(runner.finished).toBe(true);
    expect(attached).toMatchObject({ recovered: ['/dev/nbd0'], device: '/dev/nbd0', layoutApplied: false });
    expect(runner.entries.slice(0, 7).map((entry) => [entry.command, ...entry.args].join(' '))).toEqual([
      'cat /run/vdisk/attach/crash.json',
      'cat /proc/mounts',
      'cat /sys/block/nbd0/pid',
      'umount /mnt/crash',
      'kpartx -d /dev/nbd0',
      'nbd-client -d /dev/nbd0',
      'cat /sys/block/nbd0/pid',
    ]);
  });

  it('GPT with ext4 + vfat over `nbd-client -unix` (the production connect), then read-only', async () => {
    const image = blankImage('gpt.img', 256 * MiB);
    const args = [
      '--image',
      image,
      '--id',
      'gpt',
      '--socket',
      join(dir, 'nbd.sock'),
      '--timeout-seconds',
      '20',
      '--layout',
      JSON.stringify(GPT_LAYOUT),
      '--mount',
      '1:/mnt/root',
      '--mount',
      '2:/mnt/efi',
    ];
    const writer = await replay('attach-gpt-unix-socket', image, args);
    expect(writer.runner.finished).toBe(true);
    expect(writer.attached).toMatchObject({
      table: 'gpt',
      filesystemsCreated: [
        { partition: 1, filesystem: 'ext4' },
        { partition: 2, filesystem: 'vfat' },
      ],
      partitions: [
        { number: 1, start: MiB, size: 96 * MiB, mountPath: '/mnt/root' },
        { number: 2, start: 97 * MiB, mountPath: '/mnt/efi' },
      ],
    });
    const reader = await replay('attach-gpt-read-only', image, [...args, '--read-only']);
    expect(reader.runner.finished).toBe(true);
    expect(reader.attached).toMatchObject({ readOnly: true, layoutApplied: false, filesystemsCreated: [] });
  });

  function scripted(overrides: Array<[RegExp, ReturnType<typeof ok>]>): ScriptedRunner {
    return new ScriptedRunner([
      ...overrides,
      [/^cat \/run\/vdisk/, fail()],
      [/^cat \/proc\/mounts/, ok('')],
      [/^ls \/sys\/block/, ok('nbd0\nnbd1\nnbd2\n')],
      [/^cat \/sys\/block\/nbd\d+\/pid/, fail()],
      [/^blkid/, fail(2, '')],
    ]);
  }

  it('rolls back every completed step when kpartx maps no partition', async () => {
    const image = blankImage('nomap.img', 64 * MiB);
    const runner = scripted([[/^test -b/, fail()]]);
    const error = await attach(parseAttachArgv(argv(image, 'nomap', '/mnt/x')), {
      runner,
      serve: serveInProcess,
      sleep: noSleep,
    }).catch((err: unknown) => err);
    expect(error).toMatchObject({ code: 'VDISK_EATTACH_STATE', device: '/dev/nbd0' });
    const tail = runner.calls
      .slice(runner.calls.indexOf('kpartx -a -s /dev/nbd0') + 1)
      .filter((line) => !line.startsWith('test -b'));
    expect(tail).toEqual([
      'kpartx -d /dev/nbd0',
      'nbd-client -d /dev/nbd0',
      'cat /sys/block/nbd0/pid',
      'rm -f /run/vdisk/attach/nomap.json',
    ]);
    expect(runner.calls.some((line) => line.startsWith('mkfs') || line.startsWith('mount'))).toBe(false);
  });

  it('never formats a partition whose signatures blkid finds ambiguous (exit 8)', async () => {
    const image = blankImage('ambivalent.img', 64 * MiB);
    const runner = scripted([[/^blkid/, fail(8, 'ambivalent result')]]);
    const error = await attach(parseAttachArgv(argv(image, 'amb', '/mnt/a')), {
      runner,
      serve: serveInProcess,
      sleep: noSleep,
    }).catch((err: unknown) => err);
    expect(error).toMatchObject({ code: 'VDISK_EATTACH_COMMAND', command: 'blkid', exitCode: 8 });
    expect(runner.calls.some((line) => line.startsWith('mkfs'))).toBe(false);
    expect(runner.calls.slice(-3)).toEqual([
      'nbd-client -d /dev/nbd0',
      'cat /sys/block/nbd0/pid',
      'rm -f /run/vdisk/attach/amb.json',
    ]);
  });

  it('moves on to the next free device when nbd-client loses a race for one', async () => {
    const image = blankImage('race.img', 64 * MiB);
    const runner = scripted([[/^nbd-client .*\/dev\/nbd0 /, fail(1, 'Error: Device or resource busy')]]);
    let freeScans = 0;
    const counting = new ScriptedRunner([]);
    counting.run = async (command, args) => {
      if (command === 'cat' && args[0] === '/sys/block/nbd0/pid') freeScans++;
      // After the failed bind, nbd0 shows as taken by the other client.
      if (command === 'cat' && args[0] === '/sys/block/nbd0/pid' && freeScans > 1) return ok('4242\n');
      return runner.run(command, args);
    };
    const attachment = await attach(parseAttachArgv(argv(image, 'race', '/mnt/r')), {
      runner: counting,
      serve: serveInProcess,
      sleep: noSleep,
    });
    expect(attachment.report.device).toBe('/dev/nbd1');
    expect(runner.calls.filter((line) => line.startsWith('nbd-client'))).toEqual([
      'nbd-client 10.0.2.100 10809 /dev/nbd0 -N disk -b 512 -t 20',
      'nbd-client 10.0.2.100 10809 /dev/nbd1 -N disk -b 512 -t 20',
    ]);
    await detach(attachment, { runner: counting, serve: serveInProcess, sleep: noSleep });
  });

  it('read-only: refuses to lay out a blank image, and maps and mounts read-only without mkfs', async () => {
    const blank = blankImage('ro-blank.img', 64 * MiB);
    const runner = scripted([]);
    await expect(
      attach(parseAttachArgv([...argv(blank, 'ro', '/mnt/ro'), '--read-only']), {
        runner,
        serve: serveInProcess,
        sleep: noSleep,
      }),
    ).rejects.toMatchObject({
      code: 'VDISK_EATTACH_STATE',
    });
    expect(runner.calls.some((line) => line.startsWith('nbd-client'))).toBe(false);

    const image = blankImage('ro.img', 64 * MiB);
    const device = await openImage(image);
    await applyLayout(device, { table: 'gpt', partitions: [{ filesystem: 'ext4' }] }, image);
    await device.close();
    const roRunner = scripted([]);
    const attachment = await attach(parseAttachArgv([...argv(image, 'ro', '/mnt/ro'), '--read-only']), {
      runner: roRunner,
      serve: serveInProcess,
      sleep: noSleep,
    });
    expect(roRunner.calls).toContain('nbd-client 10.0.2.100 10809 /dev/nbd0 -N disk -b 512 -t 20 -readonly');
    expect(roRunner.calls).toContain('kpartx -a -s -r /dev/nbd0');
    expect(roRunner.calls).toContain('mount -o ro /dev/mapper/nbd0p1 /mnt/ro');
    expect(roRunner.calls.some((line) => line.startsWith('mkfs') || line.startsWith('blkid'))).toBe(false);
    expect(attachment.device.isReadOnly).toBe(true);
    await detach(attachment, { runner: roRunner, serve: serveInProcess, sleep: noSleep });
  });
});
