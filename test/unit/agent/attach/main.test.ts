// The agent's entrypoint and flags: the report goes to stdout and the termination-message file,
// an abort (SIGTERM's stand-in) detaches and exits 0, a failure exits 1 with the error's code, and
// flags/--config JSON parse into a bounded config (quantities, mounts, connect address).

import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAttachArgv } from '../../../../src/agent/attach/config.ts';
import { main } from '../../../../src/agent/attach/main.ts';
import { fail, ok, ScriptedRunner } from './replay-runner.ts';

const MiB = 1024 * 1024;

describe('vdisk-agent attach', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vdisk-attach-main-'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  function runner(): ScriptedRunner {
    return new ScriptedRunner([
      [/^cat \/run\/vdisk/, fail()],
      [/^cat \/proc\/mounts/, ok('')],
      [/^ls \/sys\/block/, ok('nbd0\n')],
      [/^cat \/sys\/block\/nbd\d+\/pid/, fail()],
      [/^blkid/, fail(2, '')],
    ]);
  }

  it('reports Attached, detaches on abort, reports Detached in the termination log, exits 0', async () => {
    const image = join(dir, 'disk.img');
    execFileSync('truncate', ['-s', String(64 * MiB), image]);
    const termination = join(dir, 'termination-log');
    const controller = new AbortController();
    const lines: string[] = [];
    const commands = runner();
    const code = await main(
      [
        '--image',
        image,
        '--id',
        'd1',
        '--socket',
        join(dir, 'run', 'vdisk', 's.sock'),
        '--layout',
        '{"table":"gpt","partitions":[{"size":"16Mi","filesystem":"ext4"},{"filesystem":"vfat"}]}',
        '--mount',
        '2:/mnt/b:noatime',
        '--termination-log',
        termination,
      ],
      {
        runner: commands,
        sleep: async () => undefined,
        signal: controller.signal,
        log: () => undefined,
        stderr: () => undefined,
        stdout: (text) => {
          lines.push(text);
          if (text.includes('"Attached"')) controller.abort();
        },
      },
    );
    expect(code).toBe(0);
    const [attached, detached] = lines.map((line) => JSON.parse(line));
    expect(attached).toMatchObject({
      phase: 'Attached',
      device: '/dev/nbd0',
      table: 'gpt',
      partitions: [
        { number: 1, size: 16 * MiB },
        { number: 2, mountPath: '/mnt/b' },
      ],
    });
    expect(detached).toMatchObject({ phase: 'Detached' });
    expect(JSON.parse(await readFile(termination, 'utf8'))).toMatchObject({
      phase: 'Detached',
      device: '/dev/nbd0',
    });
    expect(commands.calls).toContain(
      `nbd-client -unix ${join(dir, 'run', 'vdisk', 's.sock')} /dev/nbd0 -N disk -b 512 -t 30`,
    );
    expect(commands.calls).toContain('mkfs.vfat /dev/mapper/nbd0p2');
    expect(commands.calls).toContain('mount -o noatime /dev/mapper/nbd0p2 /mnt/b');
  });

  it('detaches right after attaching when SIGTERM came during the attach', async () => {
    const image = join(dir, 'early.img');
    execFileSync('truncate', ['-s', String(16 * MiB), image]);
    const controller = new AbortController();
    controller.abort();
    const lines: string[] = [];
    const code = await main(['--image', image, '--id', 'early', '--socket', join(dir, 'early.sock')], {
      runner: runner(),
      sleep: async () => undefined,
      signal: controller.signal,
      log: () => undefined,
      stderr: () => undefined,
      stdout: (text) => lines.push(text),
    });
    expect(code).toBe(0);
    // No partition table and no layout: the whole disk is bound, nothing is mapped.
    expect(lines.map((line) => JSON.parse(line).phase)).toEqual(['Attached', 'Detached']);
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ device: '/dev/nbd0', table: null, partitions: [] });
  });

  it('exits 1 with the error code in the report when the image is missing', async () => {
    const lines: string[] = [];
    const code = await main(['--image', join(dir, 'absent.img')], {
      runner: runner(),
      stdout: (t) => lines.push(t),
      stderr: () => undefined,
      log: () => undefined,
    });
    expect(code).toBe(1);
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ phase: 'Failed', error: { code: 'VDISK_ENOENT' } });
  });

  it('parses flags and --config JSON with quantities, and refuses bad values with VDISK_EINVAL', () => {
    const config = parseAttachArgv([
      '--config',
      JSON.stringify({
        imagePath: '/data/disk.qcow2',
        id: 'ns.disk',
        readOnly: true,
        layout: { table: 'mbr', partitions: [{ size: '1Gi', filesystem: 'ext4' }, { size: '512M' }, {}] },
        mounts: [{ partition: 1, path: '/mnt/a', options: 'noatime' }],
      }),
      '--connect',
      '10.0.2.100:10809',
    ]);
    expect(config).toMatchObject({
      imagePath: '/data/disk.qcow2',
      readOnly: true,
      socketPath: '/run/vdisk/ns.disk.sock',
      nbdServerArgs: ['10.0.2.100', '10809'],
      mounts: [{ partition: 1, path: '/mnt/a', options: 'noatime' }],
      // Kubernetes quantity rules: Gi is binary, M is decimal.
      layout: {
        table: 'mbr',
        partitions: [
          { sizeBytes: 1024 * MiB, filesystem: 'ext4' },
          { sizeBytes: 512_000_000, filesystem: 'none' },
          { filesystem: 'none' },
        ],
      },
    });
    expect(() => parseAttachArgv([])).toThrow(
      expect.objectContaining({ code: 'VDISK_EINVAL', option: '--image' }),
    );
    expect(() => parseAttachArgv(['--image', 'x', '--mount', 'one:/x'])).toThrow(
      expect.objectContaining({ code: 'VDISK_EINVAL' }),
    );
    expect(() => parseAttachArgv(['--image', 'x', '--layout', '{"table":"zfs","partitions":[{}]}'])).toThrow(
      expect.objectContaining({ code: 'VDISK_EINVAL' }),
    );
    expect(() => parseAttachArgv(['--image', 'x', '--timeout-seconds', '0'])).toThrow(
      expect.objectContaining({ code: 'VDISK_EINVAL' }),
    );
    expect(() => parseAttachArgv(['--image', 'x', '--id', '../etc'])).toThrow(
      expect.objectContaining({ code: 'VDISK_EINVAL' }),
    );
  });
});

describe('fitTerminationMessage', () => {
  it('keeps a large report within 4096 bytes as valid JSON, dropping the duplicated mounts first', async () => {
    const { fitTerminationMessage } = await import('../../../../src/agent/attach/main.ts');
    const partitions = Array.from({ length: 16 }, (_, index) => ({
      number: index + 1,
      name: `nbd0p${index + 1}`,
      path: `/dev/mapper/nbd0p${index + 1}`,
      start: index,
      size: 1,
      mountPath: `/mnt/${'x'.repeat(100)}/${index}`,
    }));
    const mounts = partitions.map((p) => ({
      partition: p.number,
      path: p.mountPath,
      source: p.path,
      options: 'noatime',
    }));
    const text = fitTerminationMessage({ phase: 'Attached', device: '/dev/nbd0', partitions, mounts });
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(4096);
    expect(JSON.parse(text)).toMatchObject({ phase: 'Attached', device: '/dev/nbd0' });
    expect(JSON.parse(text).partitions).toHaveLength(16);
    const failed = JSON.parse(
      fitTerminationMessage({ phase: 'Failed', error: { code: 'X', message: 'm'.repeat(10_000) } }),
    );
    expect(failed).toMatchObject({ phase: 'Failed', error: { code: 'X' } });
  });
});
