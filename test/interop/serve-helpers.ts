// Running `vdisk serve` (bin/vdisk.mjs) and qemu-nbd as child processes for the serve interop tests:
// each in its own process group, ready once it listens, killed by group in cleanup.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../unit/nbd/tools.ts';

export const VDISK_BIN = join(import.meta.dirname, '../../bin/vdisk.mjs');

export interface ServerProcess {
  child: ChildProcess;
  /** nbd URI clients use (with `-v` the CLI prints it; for unix sockets it is derived). */
  uri: string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stderr: () => string;
  /** SIGTERM to the process group; resolves with the exit code. */
  stop: () => Promise<number | null>;
}

/** Tool checks with a loud skip are format-harness's. */
export { missingTools } from '../helpers/format-harness.ts';

/**
 * Runs a client tool without blocking this process (servers it talks to may run in it) and returns its
 * stdout; throws with its stderr when it fails.
 */
export async function runOk(command: string, args: string[]): Promise<string> {
  const result = await run(command, args);
  if (result.code !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  return result.stdout;
}

/** afterAll of a serve suite: stops every server it started, then removes its scratch folder. */
export async function stopServersAndRemove(servers: ServerProcess[], folder: string): Promise<void> {
  for (const server of servers) await server.stop();
  await rm(folder, { recursive: true, force: true });
}

function track(child: ChildProcess): { exited: Promise<number | null>; stderr: () => string } {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { exited, stderr: () => stderr };
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Starts `node bin/vdisk.mjs serve -v <args>`; resolves once it printed its URI. */
export async function startVdiskServe(args: string[]): Promise<ServerProcess> {
  const child = spawn(process.execPath, [VDISK_BIN, 'serve', '-v', ...args], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const { exited, stderr } = track(child);
  let exitedEarly = false;
  void exited.then(() => {
    exitedEarly = true;
  });
  await waitFor(() => /serving .* at (\S+)/.test(stderr()) || exitedEarly, 'vdisk serve to listen');
  const match = /serving .* at (\S+)/.exec(stderr());
  if (!match) throw new Error(`vdisk serve did not start: ${stderr()}`);
  return {
    child,
    uri: match[1]!,
    exited,
    stderr,
    stop: async () => {
      killGroup(child, 'SIGTERM');
      const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Starts qemu-nbd on a unix socket (the reference server); resolves once the socket exists. */
export async function startQemuNbd(socketPath: string, args: string[]): Promise<ServerProcess> {
  const child = spawn('qemu-nbd', ['-k', socketPath, ...args], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const { exited, stderr } = track(child);
  await waitFor(() => existsSync(socketPath) || child.exitCode !== null, 'qemu-nbd to listen');
  if (child.exitCode !== null) throw new Error(`qemu-nbd failed: ${stderr()}`);
  return {
    child,
    uri: `nbd+unix:///?socket=${socketPath}`,
    exited,
    stderr,
    stop: async () => {
      killGroup(child, 'SIGTERM');
      return exited;
    },
  };
}
