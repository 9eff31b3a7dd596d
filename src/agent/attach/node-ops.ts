// What the agent asks of a node, each built from plain commands through the CommandRunner:
// free nbd devices (/sys/block/nbdN/pid absent or empty), current mounts (/proc/mounts), kpartx
// mapping names, and the agent's state file under /run, so a restarted agent finds its device.

import { AttachStateError, NodeCommandError } from './errors.ts';
import type { CommandResult, CommandRunner, RunOptions } from './runner.ts';

/** At most this many /dev/nbdN are considered (the nbd module's nbds_max rarely exceeds it). */
export const MAX_NBD_DEVICES = 256;

export interface MountEntry {
  source: string;
  target: string;
  fsType: string;
  options: string;
}

export class NodeOps {
  readonly runner: CommandRunner;
  constructor(runner: CommandRunner) {
    this.runner = runner;
  }

  /** Runs a command; throws NodeCommandError when it exits non-zero. */
  async check(command: string, args: readonly string[], options?: RunOptions): Promise<CommandResult> {
    const result = await this.runner.run(command, args, options);
    if (result.exitCode !== 0)
      throw new NodeCommandError({
        command,
        args,
        exitCode: result.exitCode,
        stderr: result.stderr || result.stdout,
      });
    return result;
  }

  /** The file's text, or undefined when it cannot be read. */
  async readFile(path: string): Promise<string | undefined> {
    const result = await this.runner.run('cat', [path]);
    return result.exitCode === 0 ? result.stdout : undefined;
  }

  async isBlockDevice(path: string): Promise<boolean> {
    return (await this.runner.run('test', ['-b', path])).exitCode === 0;
  }

  /** nbd device names (`nbd0`, ...) in numeric order; empty when the module is not loaded. */
  async listNbdDevices(): Promise<string[]> {
    const result = await this.runner.run('ls', ['/sys/block']);
    if (result.exitCode !== 0) return [];
    return result.stdout
      .split(/\s+/)
      .filter((name) => /^nbd\d+$/.test(name))
      .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
      .slice(0, MAX_NBD_DEVICES);
  }

  /** True when a client is bound: the kernel shows a pid for the device's connection. */
  async isNbdBound(name: string): Promise<boolean> {
    const pid = await this.readFile(`/sys/block/${name}/pid`);
    return pid !== undefined && pid.trim() !== '';
  }

  /** Free devices in order; loads the nbd module once when none exist. */
  async freeNbdDevices(): Promise<string[]> {
    let devices = await this.listNbdDevices();
    if (devices.length === 0) {
      await this.check('modprobe', ['nbd']);
      devices = await this.listNbdDevices();
      if (devices.length === 0)
        throw new AttachStateError({ message: 'modprobe nbd succeeded but no /sys/block/nbd* appeared' });
    }
    const free: string[] = [];
    for (const name of devices) if (!(await this.isNbdBound(name))) free.push(name);
    return free;
  }

  async mounts(): Promise<MountEntry[]> {
    const text = (await this.readFile('/proc/mounts')) ?? '';
    const decodeOctal = (field: string) =>
      field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
    return text
      .split('\n')
      .map((line) => line.split(' '))
      .filter((fields) => fields.length >= 4)
      .map(([source = '', target = '', fsType = '', options = '']) => ({
        source: decodeOctal(source),
        target: decodeOctal(target),
        fsType,
        options,
      }));
  }
}

/** kpartx's mapping name for partition `number` of `/dev/<deviceName>` (a `p` after a trailing digit). */
export function partitionMappingName(deviceName: string, number: number): string {
  return `${deviceName}${/\d$/.test(deviceName) ? 'p' : ''}${number}`;
}

/** True when a mount source lives on `/dev/<deviceName>` or one of its kpartx mappings. */
export function isOnDevice(source: string, deviceName: string): boolean {
  return source === `/dev/${deviceName}` || new RegExp(`^/dev/(?:mapper/)?${deviceName}p?\\d+$`).test(source);
}
