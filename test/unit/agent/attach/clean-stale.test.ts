// How a restarted agent decides what is its own: the state file's device only while its binding pid
// is unchanged, a configured mount path mounted from an nbd mapping always; and `modprobe nbd` when
// the module is not loaded yet.

import { describe, expect, it } from 'vitest';
import { parseAttachArgv } from '../../../../src/agent/attach/config.ts';
import { NodeOps } from '../../../../src/agent/attach/node-ops.ts';
import { cleanStale } from '../../../../src/agent/attach/recovery.ts';
import { fail, ok, ScriptedRunner } from './replay-runner.ts';

const noSleep = async () => undefined;
const config = parseAttachArgv(['--image', '/data/disk.img', '--id', 'd1', '--mount', '1:/mnt/data']);

describe('cleanStale', () => {
  it('leaves alone a device from the state file that another client has bound since', async () => {
    const runner = new ScriptedRunner([
      [/^cat \/run\/vdisk\/attach\/d1.json/, ok('{"device":"/dev/nbd3","pid":"100"}')],
      [/^cat \/proc\/mounts/, ok('')],
      [/^cat \/sys\/block\/nbd3\/pid/, ok('200\n')],
    ]);
    expect(await cleanStale(config, new NodeOps(runner), noSleep)).toEqual([]);
    expect(runner.calls.some((line) => /^(umount|kpartx|nbd-client)/.test(line))).toBe(false);
    expect(runner.calls.at(-1)).toBe('rm -f /run/vdisk/attach/d1.json');
  });

  it('cleans the device behind a configured mount path even without a state file', async () => {
    let mounted = true;
    const runner = new ScriptedRunner([
      [/^cat \/run\/vdisk/, fail()],
      [
        /^cat \/proc\/mounts/,
        () =>
          ok(
            mounted
              ? '/dev/mapper/nbd2p1 /mnt/data ext4 rw 0 0\n/dev/mapper/nbd2p2 /mnt/other\\040dir vfat rw 0 0\n'
              : '',
          ),
      ],
      [/^cat \/sys\/block\/nbd2\/pid/, () => (mounted ? ok('77\n') : fail())],
      [
        /^nbd-client -d/,
        () => {
          mounted = false;
          return ok();
        },
      ],
    ]);
    expect(await cleanStale(config, new NodeOps(runner), noSleep)).toEqual(['/dev/nbd2']);
    expect(runner.calls.filter((line) => /^(umount|kpartx|nbd-client)/.test(line))).toEqual([
      'umount /mnt/other dir',
      'umount /mnt/data',
      'kpartx -d /dev/nbd2',
      'nbd-client -d /dev/nbd2',
    ]);
  });

  it('falls back to a lazy unmount when the filesystem is busy', async () => {
    const runner = new ScriptedRunner([
      [/^cat \/run\/vdisk/, ok('{"device":"/dev/nbd0","pid":"5"}')],
      [/^cat \/proc\/mounts/, ok('/dev/mapper/nbd0p1 /mnt/data ext4 rw 0 0\n')],
      [/^cat \/sys\/block\/nbd0\/pid/, ok('5\n')],
      [/^umount \/mnt\/data$/, fail(32, 'target is busy')],
    ]);
    await cleanStale(config, new NodeOps(runner), noSleep);
    expect(runner.calls).toContain('umount -l /mnt/data');
  });
});

describe('NodeOps.freeNbdDevices', () => {
  it('loads the nbd module when no /sys/block/nbd* exists, then skips bound devices', async () => {
    let loaded = false;
    const runner = new ScriptedRunner([
      [/^ls \/sys\/block/, () => ok(loaded ? 'loop0\nnbd0\nnbd1\nnbd10\nnbd2\nsda\n' : 'loop0\nsda\n')],
      [
        /^modprobe nbd/,
        () => {
          loaded = true;
          return ok();
        },
      ],
      [/^cat \/sys\/block\/nbd0\/pid/, ok('42\n')],
      [/^cat \/sys\/block\/nbd1\/pid/, ok('\n')],
      [/^cat \/sys\/block\/nbd\d+\/pid/, fail()],
    ]);
    expect(await new NodeOps(runner).freeNbdDevices()).toEqual(['nbd1', 'nbd2', 'nbd10']);
    expect(runner.calls.filter((line) => line.startsWith('modprobe'))).toEqual(['modprobe nbd']);
  });
});
