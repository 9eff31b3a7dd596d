// Child processes of the control plane and the local node: each runs in its own process group
// (detached), logs to a file, and is stopped by PID: SIGTERM to the group, a grace period, SIGKILL.
// Linux /proc is read to prove that nothing of a group survived. A watchdog (one small bash loop per
// Node.js process) kills the groups still listed, and removes the listed temp folders, if this process
// dies without stopping them (SIGKILL, a killed test runner): a crashed run leaves no control plane behind.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, relative } from 'node:path';

/**
 * $1 = PID to outlive, $2 = list file: lines `g <pgid>` (process groups to kill) and `d <folder>` (temp
 * folders to remove) once $1 is gone.
 */
const WATCHDOG_SCRIPT = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
[ -s "$2" ] || { rm -f "$2"; exit 0; }
groups=$(sed -n 's/^g //p' "$2")
if [ -n "$groups" ]; then
  for g in $groups; do kill -TERM -- "-$g" 2>/dev/null; done
  sleep 3
  for g in $groups; do kill -KILL -- "-$g" 2>/dev/null; done
fi
sed -n 's/^d //p' "$2" | while IFS= read -r d; do rm -rf -- "$d"; done
rm -f "$2"
`;

let watchdogListPath: string | undefined;
const watchedGroups = new Set<number>();
const watchedFolders = new Set<string>();

function writeWatchList(): void {
  if (watchdogListPath === undefined) return;
  const lines = [...[...watchedGroups].map((g) => `g ${g}`), ...[...watchedFolders].map((d) => `d ${d}`)];
  writeFileSync(watchdogListPath, lines.length === 0 ? '' : `${lines.join('\n')}\n`);
}

/** Starts the watchdog of this Node.js process on first use; it outlives this process by ~1 s. */
function ensureWatchdog(): void {
  if (watchdogListPath !== undefined) return;
  watchdogListPath = join(tmpdir(), `vdisk-watchdog-${process.pid}-${randomBytes(4).toString('hex')}.list`);
  writeFileSync(watchdogListPath, '');
  const watchdog = spawn(
    'bash',
    ['-c', WATCHDOG_SCRIPT, 'vdisk-watchdog', String(process.pid), watchdogListPath],
    {
      detached: true,
      stdio: 'ignore',
    },
  );
  watchdog.unref();
  const listPath = watchdogListPath;
  process.once('exit', () => {
    if (watchedGroups.size === 0 && watchedFolders.size === 0) rmSync(listPath, { force: true });
  });
}

function watchGroup(pgid: number): void {
  ensureWatchdog();
  watchedGroups.add(pgid);
  writeWatchList();
}

function unwatchGroup(pgid: number): void {
  if (watchedGroups.delete(pgid)) writeWatchList();
}

/**
 * Has the watchdog remove a temporary folder (inside os.tmpdir() only) if this process dies before
 * {@link forgetTempFolder} is called; for the harness's mkdtemp folders (etcd data is ~120 MB).
 */
export function removeTempFolderOnCrash(folder: string): void {
  const inside = relative(tmpdir(), folder);
  if (inside === '' || inside.startsWith('..') || isAbsolute(inside) || folder.includes('\n')) return;
  ensureWatchdog();
  watchedFolders.add(folder);
  writeWatchList();
}

/** Undoes {@link removeTempFolderOnCrash} once the folder was removed normally. */
export function forgetTempFolder(folder: string): void {
  if (watchedFolders.delete(folder)) writeWatchList();
}

/** A started child: its PID (= its process group id) and a promise settled when it exits. */
export interface ManagedProcess {
  name: string;
  pid: number;
  logPath: string;
  child: ChildProcess;
  /** Resolves with the exit code (or the signal name) once the process has exited and been reaped. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
}

/** Options for {@link startProcess}. */
export interface StartProcessOptions {
  name: string;
  command: string;
  args: readonly string[];
  logPath: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Keep running when this Node.js process exits (cluster:up); default false. */
  unref?: boolean;
}

/** Spawns a command in a new process group with stdout+stderr appended to `logPath`. */
export function startProcess(options: StartProcessOptions): ManagedProcess {
  const logFd = openSync(options.logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(options.command, [...options.args], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      detached: true,
      stdio: ['ignore', logFd, logFd],
    });
  } finally {
    closeSync(logFd);
  }
  if (child.pid === undefined) {
    throw new Error(`could not start ${options.name} (${options.command}): see ${options.logPath}`);
  }
  const pid = child.pid;
  watchGroup(pid);
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      unwatchGroup(pid);
      resolve({ code, signal });
    });
    child.once('error', () => {
      done = true;
      resolve({ code: null, signal: null });
    });
  });
  if (options.unref === true) child.unref();
  return {
    name: options.name,
    pid: child.pid,
    logPath: options.logPath,
    child,
    exited,
    hasExited: () => done,
  };
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** PIDs whose process group is `pgid` (Linux /proc; empty elsewhere). Zombies are not counted. */
export async function processGroupMembers(pgid: number): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const members: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command name "(...)": state, ppid, pgrp, ...
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] !== 'Z' && Number(fields[2]) === pgid) members.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return members;
}

/** True while a process with this PID exists and is not a zombie. */
export async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Stops a process group started by {@link startProcess} or by another process (then pass a PID):
 * SIGTERM, then SIGKILL after `gracePeriodMs`, then waits until no member is left (bounded).
 */
export async function stopProcessGroup(pgid: number, gracePeriodMs = 10_000): Promise<void> {
  signalGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + gracePeriodMs;
  while (Date.now() < deadline) {
    if ((await processGroupMembers(pgid)).length === 0) return;
    await sleep(50);
  }
  signalGroup(pgid, 'SIGKILL');
  for (let attempt = 0; attempt < 100; attempt++) {
    if ((await processGroupMembers(pgid)).length === 0) return;
    await sleep(50);
  }
  throw new Error(`process group ${pgid} survived SIGKILL`);
}

/** Stops a managed process and waits until Node.js has reaped it. */
export async function stopProcess(proc: ManagedProcess, gracePeriodMs = 10_000): Promise<void> {
  if (!proc.hasExited() || (await processGroupMembers(proc.pid)).length > 0) {
    await stopProcessGroup(proc.pid, gracePeriodMs);
  }
  await Promise.race([proc.exited, sleep(5_000)]);
}
