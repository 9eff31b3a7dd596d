// A CommandRunner whose commands run inside the node tier's VM: each command becomes a small shell
// script sent over a serial-port command channel (test/node/vm/guest-cmdloop.sh) and answered with
// its exit code and base64'd output. Commands resolve to /usr/{s,}bin first, because busybox sh
// would otherwise run its own applets (mount, umount) instead of util-linux's.

import { connect, type Socket } from 'node:net';
import type { CommandResult, CommandRunner, RunOptions } from '../../../src/agent/attach/runner.ts';

const DEFAULT_TIMEOUT_MS = 300_000;

function quote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The guest script for one command (exported for the unit tests of this helper's quoting). */
export function guestScript(command: string, args: readonly string[], input?: string): string {
  const lookup = `c=${quote(command)}\ncase "$c" in */*) ;; *) for d in /usr/sbin /usr/bin; do if [ -x "$d/$c" ]; then c="$d/$c"; break; fi; done ;; esac\n`;
  const argv = `"$c" ${args.map(quote).join(' ')}`;
  return input === undefined
    ? `${lookup}${argv} </dev/null\n`
    : `${lookup}printf %s ${quote(Buffer.from(input).toString('base64'))} | base64 -d | ${argv}\n`;
}

export class VmRunner implements CommandRunner {
  private readonly socketPath: string;
  private socket: Socket | undefined;
  private buffered = '';
  private readonly waiting = new Map<string, (result: CommandResult) => void>();
  private queue: Promise<unknown> = Promise.resolve();
  private counter = 0;
  private readonly prefix = `${process.pid}x${Date.now().toString(36)}`;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  private async connected(): Promise<Socket> {
    if (this.socket) return this.socket;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(this.socketPath, () => resolve(s));
      s.once('error', reject);
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => undefined);
    this.socket = socket;
    return socket;
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let newline = this.buffered.indexOf('\n');
    while (newline >= 0) {
      const line = this.buffered.slice(0, newline).replace(/\r$/, '');
      this.buffered = this.buffered.slice(newline + 1);
      const fields = line.split(' ');
      if (fields[0] === '@@R' && fields.length >= 5) {
        const resolve = this.waiting.get(fields[1] ?? '');
        if (resolve) {
          this.waiting.delete(fields[1] ?? '');
          const decode = (field: string) => Buffer.from(field.slice(1), 'base64').toString('utf8');
          resolve({
            exitCode: Number(fields[2]),
            stdout: decode(fields[3] ?? '.'),
            stderr: decode(fields[4] ?? '.'),
          });
        }
      }
      newline = this.buffered.indexOf('\n');
    }
  }

  run(command: string, args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const next = this.queue.then(() => this.runNow(command, args, options));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async runNow(
    command: string,
    args: readonly string[],
    options: RunOptions,
  ): Promise<CommandResult> {
    const socket = await this.connected();
    const id = `${this.prefix}-${++this.counter}`;
    const script = Buffer.from(guestScript(command, args, options.input)).toString('base64');
    return new Promise<CommandResult>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve({
          exitCode: 124,
          stdout: '',
          stderr: `no answer from the VM within ${options.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`,
        });
      }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      this.waiting.set(id, (result) => {
        clearTimeout(timer);
        resolve(result);
      });
      socket.write(`${id} ${script}\n`);
    });
  }

  /** Runs `sh -c script` in the guest. */
  sh(script: string, options?: RunOptions): Promise<CommandResult> {
    return this.run('sh', ['-c', script], options);
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }
}
