// The one seam between the attach agent and the node: every node-side step (nbd-client, kpartx,
// mkfs, mount, reading /sys and /proc) is a command run through a CommandRunner. Production runs
// them on the node; unit tests replay a recorded transcript; the node tier runs them inside a VM.

import { spawn } from 'node:child_process';

export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Bytes fed to the command's stdin. */
  input?: string;
  /** Kill the command after this long (exit code 124, as timeout(1) reports). */
  timeoutMs?: number;
}

export interface CommandRunner {
  run(command: string, args: readonly string[], options?: RunOptions): Promise<CommandResult>;
}

/** Output kept per stream; the rest is dropped (mkfs and kpartx print little). */
export const MAX_CAPTURE_BYTES = 1024 * 1024;
export const DEFAULT_COMMAND_TIMEOUT_MS = 120_000;

/** Runs commands on this machine with PATH extended by the sbin folders (mkfs.*, kpartx live there). */
export class LocalRunner implements CommandRunner {
  run(command: string, args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    return new Promise((resolve) => {
      const path = `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;
      const child = spawn(command, [...args], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, PATH: path, LC_ALL: 'C' },
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let outBytes = 0;
      let errBytes = 0;
      child.stdout.on('data', (chunk: Buffer) => {
        if (outBytes < MAX_CAPTURE_BYTES) out.push(chunk);
        outBytes += chunk.length;
      });
      child.stderr.on('data', (chunk: Buffer) => {
        if (errBytes < MAX_CAPTURE_BYTES) err.push(chunk);
        errBytes += chunk.length;
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
      let timedOut = false;
      timer.unref();
      child.on('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve({
          exitCode: error.code === 'ENOENT' ? 127 : 126,
          stdout: '',
          stderr: `${command}: ${error.message}`,
        });
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        timedOut = signal === 'SIGKILL';
        resolve({
          exitCode: timedOut ? 124 : (code ?? 128),
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        });
      });
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input ?? '');
    });
  }
}

/** One command and its result, as a transcript records them. */
export interface TranscriptEntry {
  command: string;
  args: string[];
  input?: string;
  result: CommandResult;
}

/** Wraps a runner and records every command and result in order (for transcripts and reports). */
export class RecordingRunner implements CommandRunner {
  readonly entries: TranscriptEntry[] = [];
  private readonly inner: CommandRunner;
  constructor(inner: CommandRunner) {
    this.inner = inner;
  }
  async run(command: string, args: readonly string[], options?: RunOptions): Promise<CommandResult> {
    const result = await this.inner.run(command, args, options);
    this.entries.push({
      command,
      args: [...args],
      ...(options?.input === undefined ? {} : { input: options.input }),
      result,
    });
    return result;
  }
}
