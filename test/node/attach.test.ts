// The attach agent on a real Linux kernel (issue 8): a TCG VM runs nbd-client, kpartx, mkfs and mount
// for the agent (its node commands go over a serial command channel); the agent itself runs on the
// host with vdisk's in-process NBD server, forwarded into the guest. Checked: MBR+ext4 on a 4 GiB
// image across detach/re-attach, GPT with ext4+vfat, a read-only attach, and recovery after kill -9.

import { parseAttachLine } from '../../src/controller/pod-reports.ts';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/main.ts';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import {
  bootVm,
  buildGuest,
  GUEST_NBD_ADDRESS,
  GUEST_NBD_ADDRESS_2,
  missingTools,
  type Vm,
} from './helpers/vm.ts';

const AGENT = fileURLToPath(new URL('./helpers/agent-in-vm.ts', import.meta.url));
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const missing = missingTools();
let guest: { kernel: string; initrd: string } | undefined;
let skipReason =
  missing.length > 0 ? `missing host tools: ${missing.join(', ')} (.ci/run installs them)` : '';
if (!skipReason) {
  try {
    guest = buildGuest();
  } catch (err) {
    skipReason = `cannot build the guest kernel/initramfs: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`;
  }
}
if (skipReason) console.warn(`SKIPPING the node tier (attach agent in a VM): ${skipReason}`);

const hasQcow2 = formatRegistry.some((driver) => driver.name === 'qcow2');
if (!hasQcow2)
  console.warn(
    'node tier: the qcow2 driver is not registered yet; images are raw (qemu-img check is skipped)',
  );
const transcriptDir = process.env.VDISK_NODE_TRANSCRIPT_DIR;

interface Agent {
  child: ChildProcess;
  nextReport(): Promise<Record<string, unknown>>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
  kill9(): Promise<void>;
  stderr(): string;
}

function startAgent(
  vm: Vm,
  args: string[],
  transcriptName?: string,
  channel = vm.agentSocket,
  env: Record<string, string> = {},
): Agent {
  const transcript = transcriptDir && transcriptName ? join(transcriptDir, `${transcriptName}.json`) : '-';
  const child = spawn(process.execPath, [AGENT, channel, transcript, '--', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const reports: Array<Record<string, unknown>> = [];
  const waiters: Array<(report: Record<string, unknown>) => void> = [];
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    let newline = stdout.indexOf('\n');
    while (newline >= 0) {
      const line = stdout.slice(0, newline);
      stdout = stdout.slice(newline + 1);
      if (line.startsWith('{')) {
        const report = JSON.parse(line) as Record<string, unknown>;
        const waiter = waiters.shift();
        if (waiter) waiter(report);
        else reports.push(report);
      }
      newline = stdout.indexOf('\n');
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    nextReport: () =>
      new Promise((resolve, reject) => {
        const queued = reports.shift();
        if (queued) return resolve(queued);
        const timer = setTimeout(
          () => reject(new Error(`no report from the agent; stderr:\n${stderr}`)),
          240_000,
        );
        waiters.push((report) => {
          clearTimeout(timer);
          resolve(report);
        });
        exited.then(() =>
          setTimeout(() => reject(new Error(`agent exited without a report; stderr:\n${stderr}`)), 100),
        );
      }),
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
    kill9: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    stderr: () => stderr,
  };
}

async function partitionsJson(
  image: string,
): Promise<{ table: string; partitions: Array<{ start: number; length: number }> }> {
  let stdout = '';
  const code = await runCli(['partitions', '--output=json', image], {
    stdout: (t) => (stdout += t),
    stderr: () => undefined,
    isTty: false,
  });
  expect(code).toBe(0);
  return JSON.parse(stdout);
}

/** Reads a file from an ext4 partition of the image on the host, with e2fsprogs' `?offset=` syntax. */
function debugfsCat(dir: string, image: string, offsetBytes: number, file: string): string {
  let raw = image;
  if (hasQcow2) {
    raw = join(dir, 'check.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', image, raw]);
  }
  try {
    return execFileSync('debugfs', ['-R', `cat ${file}`, `${raw}?offset=${offsetBytes}`], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } finally {
    if (raw !== image) execFileSync('rm', ['-f', raw]);
  }
}

/** A blank image made by `vdisk create` (qcow2 once its driver is registered, raw before). */
async function makeImage(dir: string, name: string, sizeBytes: number): Promise<string> {
  const format = hasQcow2 ? 'qcow2' : 'raw';
  const image = join(dir, `${name}.${format}`);
  let stderr = '';
  const code = await runCli(['create', '-q', '-f', format, image, String(sizeBytes)], {
    stdout: () => undefined,
    stderr: (t) => (stderr += t),
    isTty: false,
  });
  expect(code, stderr).toBe(0);
  return image;
}

function checkImage(image: string): void {
  // qemu-img check exits 0 when clean (3 would be leaks, 2 corruption); raw has no metadata to check.
  if (hasQcow2) execFileSync('qemu-img', ['check', '-q', image]);
}

describe.skipIf(skipReason !== '')('attach agent on a real kernel (TCG VM)', () => {
  let dir: string;
  let nbdSocket: string;
  let secondNbdSocket: string;
  let vm: Vm;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vdisk-node-'));
    nbdSocket = join(dir, 'nbd.sock');
    secondNbdSocket = join(dir, 'nbd2.sock');
    if (!guest) throw new Error('unreachable: guest not built');
    vm = await bootVm({ dir, nbdSocket, secondNbdSocket, guest });
  });

  afterAll(async () => {
    await vm?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** `viaUnixSocket`: nbd-client connects with `-unix` (the production default) to a guest-side relay. */
  function baseArgs(image: string, id: string, viaUnixSocket = false): string[] {
    const connect = viaUnixSocket ? [] : ['--connect', GUEST_NBD_ADDRESS];
    return ['--image', image, '--id', id, '--socket', nbdSocket, ...connect, '--timeout-seconds', '20'];
  }

  async function expectNothingLeft(): Promise<void> {
    expect((await vm.shell.run('dmsetup', ['ls'])).stdout).toMatch(/No devices found/);
    expect((await vm.shell.run('cat', ['/sys/block/nbd0/pid'])).exitCode).not.toBe(0);
    expect((await vm.shell.run('cat', ['/sys/block/nbd1/pid'])).exitCode).not.toBe(0);
    expect((await vm.shell.run('cat', ['/sys/block/nbd0/size'])).stdout.trim()).toBe('0');
    expect((await vm.shell.run('cat', ['/proc/mounts'])).stdout).not.toMatch(/nbd/);
  }

  it('attaches a 4 GiB image with an MBR + ext4 layout, keeps a file across detach and re-attach', async () => {
    const image = await makeImage(dir, 'mbr', 4 * GiB);
    const args = [
      ...baseArgs(image, 'mbr'),
      '--layout',
      JSON.stringify({ table: 'mbr', partitions: [{ filesystem: 'ext4', label: 'data' }] }),
      '--mount',
      '1:/mnt/data',
    ];
    const first = startAgent(vm, args, 'attach-mbr-ext4-first');
    const report = await first.nextReport();
    expect(report, first.stderr()).toMatchObject({
      phase: 'Attached',
      device: '/dev/nbd0',
      table: 'mbr',
      layoutApplied: true,
      filesystemsCreated: [{ partition: 1, filesystem: 'ext4' }],
      partitions: [
        {
          number: 1,
          name: 'nbd0p1',
          path: '/dev/mapper/nbd0p1',
          start: MiB,
          size: 4 * GiB - MiB,
          filesystem: 'ext4',
          mountPath: '/mnt/data',
        },
      ],
    });
    // The controller reads this line from the pod's log into status.attachment.
    expect(parseAttachLine(JSON.stringify(report))).toEqual({
      device: '/dev/nbd0',
      partitions: [{ name: 'nbd0p1', start: MiB, size: 4 * GiB - MiB, mountPath: '/mnt/data' }],
    });
    expect((await vm.shell.run('cat', ['/proc/mounts'])).stdout).toMatch(
      /^\/dev\/mapper\/nbd0p1 \/mnt\/data ext4 rw/m,
    );
    expect(
      (await vm.shell.run('blkid', ['-o', 'value', '-s', 'LABEL', '/dev/mapper/nbd0p1'])).stdout.trim(),
    ).toBe('data');
    const token = `vdisk-${Date.now()}`;
    expect((await vm.shell.sh(`echo ${token} > /mnt/data/proof.txt && sync`)).exitCode).toBe(0);

    expect(await first.stop(), first.stderr()).toBe(0);
    expect(await first.nextReport()).toMatchObject({ phase: 'Detached', device: '/dev/nbd0' });
    await expectNothingLeft();
    // The partition table vdisk wrote in-process is what fdisk-style tools see on the host.
    expect((await partitionsJson(image)).partitions).toMatchObject([{ start: MiB, length: 4 * GiB - MiB }]);
    expect(debugfsCat(dir, image, MiB, '/proof.txt').trim()).toBe(token);

    const second = startAgent(vm, args, 'attach-mbr-ext4-again');
    expect(await second.nextReport(), second.stderr()).toMatchObject({
      phase: 'Attached',
      layoutApplied: false,
      filesystemsCreated: [],
      recovered: [],
    });
    expect((await vm.shell.run('cat', ['/mnt/data/proof.txt'])).stdout.trim()).toBe(token);
    expect(await second.stop()).toBe(0);
    await expectNothingLeft();
    checkImage(image);
  });

  it('lays out a GPT with ext4 and vfat, then attaches it read-only without changing a byte', async () => {
    const image = await makeImage(dir, 'gpt', 256 * MiB);
    const layout = {
      table: 'gpt',
      partitions: [
        { size: '96Mi', filesystem: 'ext4', label: 'root' },
        { filesystem: 'vfat', label: 'efi', type: 'efi' },
      ],
    };
    // This attach takes the production path: `nbd-client -unix <socket>`. The guest cannot see the
    // host's socket, so a relay in the guest listens on the same path and forwards to the host's.
    const relay = `mkdir -p ${dirname(nbdSocket)} && (socat UNIX-LISTEN:${nbdSocket},fork TCP:${GUEST_NBD_ADDRESS} </dev/null >/dev/null 2>&1 &)`;
    expect((await vm.shell.sh(relay)).exitCode).toBe(0);
    const args = [
      ...baseArgs(image, 'gpt', true),
      '--layout',
      JSON.stringify(layout),
      '--mount',
      '1:/mnt/root',
      '--mount',
      '2:/mnt/efi',
    ];
    const writer = startAgent(vm, args, 'attach-gpt-unix-socket');
    expect(await writer.nextReport(), writer.stderr()).toMatchObject({
      table: 'gpt',
      filesystemsCreated: [
        { partition: 1, filesystem: 'ext4' },
        { partition: 2, filesystem: 'vfat' },
      ],
      partitions: [
        { number: 1, name: 'nbd0p1', start: MiB, size: 96 * MiB, mountPath: '/mnt/root' },
        { number: 2, name: 'nbd0p2', start: 97 * MiB, mountPath: '/mnt/efi' },
      ],
    });
    expect(
      (await vm.shell.run('blkid', ['-o', 'value', '-s', 'TYPE', '/dev/mapper/nbd0p2'])).stdout.trim(),
    ).toBe('vfat');
    expect(
      (await vm.shell.sh('echo root-file > /mnt/root/a.txt && echo efi-file > /mnt/efi/b.txt && sync'))
        .exitCode,
    ).toBe(0);
    expect(await writer.stop()).toBe(0);
    await expectNothingLeft();
    const gpt = await partitionsJson(image);
    expect(gpt.table).toBe('gpt');
    expect(gpt.partitions).toHaveLength(2);

    const before = createHash('sha256')
      .update(await readFile(image))
      .digest('hex');
    const reader = startAgent(vm, [...args, '--read-only'], 'attach-gpt-read-only');
    expect(await reader.nextReport(), reader.stderr()).toMatchObject({
      phase: 'Attached',
      readOnly: true,
      filesystemsCreated: [],
    });
    const mounts = (await vm.shell.run('cat', ['/proc/mounts'])).stdout;
    expect(mounts).toMatch(/^\/dev\/mapper\/nbd0p1 \/mnt\/root ext4 ro[,\s]/m);
    expect(mounts).toMatch(/^\/dev\/mapper\/nbd0p2 \/mnt\/efi vfat ro[,\s]/m);
    expect((await vm.shell.run('blockdev', ['--getro', '/dev/mapper/nbd0p1'])).stdout.trim()).toBe('1');
    expect((await vm.shell.run('blockdev', ['--getro', '/dev/nbd0'])).stdout.trim()).toBe('1');
    expect((await vm.shell.run('cat', ['/mnt/root/a.txt'])).stdout).toBe('root-file\n');
    expect((await vm.shell.run('cat', ['/mnt/efi/b.txt'])).stdout).toBe('efi-file\n');
    expect((await vm.shell.sh('echo x > /mnt/root/c.txt')).exitCode).not.toBe(0);
    expect(await reader.stop()).toBe(0);
    await expectNothingLeft();
    expect(
      createHash('sha256')
        .update(await readFile(image))
        .digest('hex'),
    ).toBe(before);
    checkImage(image);
  });

  it('maps logical partitions of an MBR extended partition as kpartx numbers them (5, 6)', async () => {
    const image = await makeImage(dir, 'logical', 64 * MiB);
    const layout = {
      table: 'mbr',
      partitions: [
        { size: '4Mi' },
        { size: '4Mi' },
        { size: '4Mi' },
        { size: '4Mi' },
        { filesystem: 'ext4' },
      ],
    };
    const args = [
      ...baseArgs(image, 'logical'),
      '--layout',
      JSON.stringify(layout),
      '--mount',
      '6:/mnt/logical',
    ];
    const agent = startAgent(vm, args);
    const report = await agent.nextReport();
    expect(report, JSON.stringify(report)).toMatchObject({
      phase: 'Attached',
      filesystemsCreated: [{ partition: 6, filesystem: 'ext4' }],
    });
    expect((report.partitions as Array<{ name: string }>).map((p) => p.name)).toEqual([
      'nbd0p1',
      'nbd0p2',
      'nbd0p3',
      'nbd0p5',
      'nbd0p6',
    ]);
    // kpartx read vdisk's EBR chain to the same sectors vdisk put the logicals at.
    const table = (await vm.shell.run('dmsetup', ['table', 'nbd0p6'])).stdout.trim().split(/\s+/);
    const p6 = (report.partitions as Array<{ name: string; start: number; size: number }>).find(
      (p) => p.name === 'nbd0p6',
    );
    expect(table.slice(0, 3)).toEqual(['0', String((p6?.size ?? 0) / 512), 'linear']);
    expect(table.at(-1)).toBe(String((p6?.start ?? 0) / 512));
    expect((await vm.shell.sh('echo logical > /mnt/logical/l.txt && sync')).exitCode).toBe(0);
    expect(await agent.stop()).toBe(0);
    await expectNothingLeft();
    checkImage(image);
  });

  it('attaches two disks at once through two agents: distinct devices, each file on its own image', async () => {
    const layout = JSON.stringify({ table: 'mbr', partitions: [{ filesystem: 'ext4' }] });
    const images = [await makeImage(dir, 'two-a', 64 * MiB), await makeImage(dir, 'two-b', 64 * MiB)];
    const agents = images.map((image, index) =>
      startAgent(
        vm,
        [
          '--image',
          image,
          '--id',
          `two-${index}`,
          '--socket',
          index === 0 ? nbdSocket : secondNbdSocket,
          '--connect',
          index === 0 ? GUEST_NBD_ADDRESS : GUEST_NBD_ADDRESS_2,
          '--layout',
          layout,
          '--mount',
          `1:/mnt/two-${index}`,
        ],
        undefined,
        index === 0 ? vm.agentSocket : vm.secondAgentSocket,
      ),
    );
    const reports = await Promise.all(agents.map((agent) => agent.nextReport()));
    expect(
      reports.map((report) => report.phase),
      JSON.stringify(reports),
    ).toEqual(['Attached', 'Attached']);
    expect(reports.map((report) => report.device).sort()).toEqual(['/dev/nbd0', '/dev/nbd1']);
    for (const index of [0, 1]) {
      expect((await vm.shell.sh(`echo disk-${index} > /mnt/two-${index}/which.txt && sync`)).exitCode).toBe(
        0,
      );
    }
    expect(await Promise.all(agents.map((agent) => agent.stop()))).toEqual([0, 0]);
    await expectNothingLeft();
    for (const [index, image] of images.entries()) {
      expect(debugfsCat(dir, image, MiB, '/which.txt').trim()).toBe(`disk-${index}`);
      checkImage(image);
    }
  });

  it('recovers from a SIGKILL in the middle of the attach sequence, between kpartx and mkfs', async () => {
    const image = await makeImage(dir, 'midway', 64 * MiB);
    const args = [
      ...baseArgs(image, 'midway'),
      '--layout',
      JSON.stringify({ table: 'mbr', partitions: [{ filesystem: 'ext4' }] }),
      '--mount',
      '1:/mnt/midway',
    ];
    const doomed = startAgent(vm, args, undefined, vm.agentSocket, { VDISK_AGENT_DIE_BEFORE: 'mkfs.ext4' });
    await expect(doomed.nextReport()).rejects.toThrow(/exited without a report/);
    expect(doomed.child.signalCode).toBe('SIGKILL');
    // Left behind: the binding and the mapping, with no filesystem yet.
    expect((await vm.shell.run('cat', ['/sys/block/nbd0/pid'])).exitCode).toBe(0);
    expect((await vm.shell.run('dmsetup', ['ls'])).stdout).toMatch(/nbd0p1/);

    const successor = startAgent(vm, args);
    expect(await successor.nextReport(), successor.stderr()).toMatchObject({
      phase: 'Attached',
      recovered: ['/dev/nbd0'],
      layoutApplied: false,
      filesystemsCreated: [{ partition: 1, filesystem: 'ext4' }],
      mounts: [{ path: '/mnt/midway' }],
    });
    expect(await successor.stop()).toBe(0);
    await expectNothingLeft();
    checkImage(image);
  });

  it('recovers after the agent (and its NBD server) is killed with SIGKILL while attached', async () => {
    const image = await makeImage(dir, 'crash', 128 * MiB);
    const args = [
      ...baseArgs(image, 'crash'),
      '--layout',
      JSON.stringify({ table: 'mbr', partitions: [{ filesystem: 'ext4' }] }),
      '--mount',
      '1:/mnt/crash',
    ];
    const doomed = startAgent(vm, args);
    expect(await doomed.nextReport(), doomed.stderr()).toMatchObject({
      phase: 'Attached',
      device: '/dev/nbd0',
    });
    expect((await vm.shell.sh('echo survived > /mnt/crash/before-kill.txt && sync')).exitCode).toBe(0);
    await doomed.kill9();
    // What the next agent finds: the device still bound to a dead server, still mapped and mounted.
    expect((await vm.shell.run('cat', ['/sys/block/nbd0/pid'])).exitCode).toBe(0);
    expect((await vm.shell.run('cat', ['/proc/mounts'])).stdout).toMatch(/nbd0p1 \/mnt\/crash/);

    const successor = startAgent(vm, args, 'attach-recover-after-kill');
    expect(await successor.nextReport(), successor.stderr()).toMatchObject({
      phase: 'Attached',
      device: '/dev/nbd0',
      recovered: ['/dev/nbd0'],
      layoutApplied: false,
      filesystemsCreated: [],
    });
    expect((await vm.shell.run('cat', ['/mnt/crash/before-kill.txt'])).stdout).toBe('survived\n');
    expect(await successor.stop()).toBe(0);
    await expectNothingLeft();
    checkImage(image);
  });
});
