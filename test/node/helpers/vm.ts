// Boots the node tier's VM: QEMU with TCG (this machine exposes no usable KVM; see
// /work/shared/notes/node-vm.md), a stock Debian cloud kernel and our initramfs; console on stdio,
// command channels on two unix sockets, and the host's NBD unix socket forwarded to 10.0.2.100:10809.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmRunner } from './vm-runner.ts';

export const GUEST_NBD_ADDRESS = '10.0.2.100:10809';
/** Where the guest reaches `secondNbdSocket` (a second disk served by a second agent). */
export const GUEST_NBD_ADDRESS_2 = '10.0.2.100:10810';
const BOOT_TIMEOUT_MS = 120_000;

export function has(tool: string): boolean {
  return (
    spawnSync('sh', ['-c', `command -v ${tool}`], {
      stdio: 'ignore',
      env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` },
    }).status === 0
  );
}

/** The tools the tier needs on the host; the names of the missing ones. */
export function missingTools(): string[] {
  const tools = [
    'qemu-system-x86_64',
    'socat',
    'busybox',
    'cpio',
    'nbd-client',
    'kpartx',
    'dmsetup',
    'mkfs.ext4',
    'mkfs.vfat',
    'blkid',
    'depmod',
    'modprobe',
    'apt-get',
    'dpkg-deb',
    'qemu-img',
    'debugfs',
    'gzip',
  ];
  return tools.filter((tool) => !has(tool));
}

export function cacheDir(): string {
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'vdisk', 'node-vm');
}

/** Builds (or finds cached) kernel and initramfs; throws with the script's stderr when it cannot. */
export function buildGuest(): { kernel: string; initrd: string } {
  const script = fileURLToPath(new URL('../vm/build-guest.sh', import.meta.url));
  const output = execFileSync(script, [cacheDir()], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` },
  });
  const value = (key: string) => new RegExp(`^${key}=(.*)$`, 'm').exec(output)?.[1] ?? '';
  return { kernel: value('KERNEL'), initrd: value('INITRD') };
}

export interface Vm {
  /** The test's command channel (the agent gets its own, `agentSocket`). */
  shell: VmRunner;
  agentSocket: string;
  /** A second agent's command channel (ttyS3), for two disks attached at once. */
  secondAgentSocket: string;
  console(): string;
  stop(): Promise<void>;
}

/** Boots the guest; resolves once its command channels are up. `nbdSocket` need not exist yet. */
export async function bootVm(options: {
  dir: string;
  nbdSocket: string;
  secondNbdSocket: string;
  guest: { kernel: string; initrd: string };
}): Promise<Vm> {
  const agentSocket = join(options.dir, 'agent-cmd.sock');
  const testSocket = join(options.dir, 'test-cmd.sock');
  const secondAgentSocket = join(options.dir, 'agent2-cmd.sock');
  for (const path of [
    agentSocket,
    testSocket,
    secondAgentSocket,
    options.nbdSocket,
    options.secondNbdSocket,
  ]) {
    // QEMU separates option fields with commas.
    if (path.includes(',')) throw new Error(`socket path ${path} contains a comma`);
  }
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-accel', 'tcg,thread=multi', '-cpu', 'max', '-m', '512', '-smp', '1'],
      ...['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'],
      ...[
        '-serial',
        'stdio',
        '-serial',
        `unix:${agentSocket},server=on,wait=off`,
        '-serial',
        `unix:${testSocket},server=on,wait=off`,
        '-serial',
        `unix:${secondAgentSocket},server=on,wait=off`,
      ],
      ...['-kernel', options.guest.kernel, '-initrd', options.guest.initrd],
      ...['-append', 'console=ttyS0 quiet panic=-1 i8042.noaux i8042.nokbd'],
      ...[
        '-netdev',
        `user,id=n0,restrict=on,ipv6=off,guestfwd=tcp:${GUEST_NBD_ADDRESS}-cmd:socat - UNIX-CONNECT:${options.nbdSocket},guestfwd=tcp:${GUEST_NBD_ADDRESS_2}-cmd:socat - UNIX-CONNECT:${options.secondNbdSocket}`,
      ],
      ...['-device', 'virtio-net-pci,netdev=n0,romfile='],
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let consoleText = '';
  qemu.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    consoleText += chunk.replace(/\r/g, '');
  });
  qemu.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    consoleText += chunk;
  });
  const killGroup = () => {
    try {
      if (qemu.pid) process.kill(-qemu.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  process.once('exit', killGroup);
  const exited = new Promise<void>((resolve) => qemu.once('exit', () => resolve()));
  const started = Date.now();
  while (!consoleText.includes('@@VDISK READY')) {
    if (qemu.exitCode !== null || Date.now() - started > BOOT_TIMEOUT_MS) {
      killGroup();
      throw new Error(`VM did not boot (exit ${qemu.exitCode}); console:\n${consoleText.slice(-4000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const shell = new VmRunner(testSocket);
  return {
    shell,
    agentSocket,
    secondAgentSocket,
    console: () => consoleText,
    async stop() {
      shell.close();
      killGroup();
      await exited;
      process.off('exit', killGroup);
    },
  };
}
