// Runs one command as a child process and measures its wall time and peak resident memory: with
// GNU time (`/usr/bin/time -f "%M %U %S"`, max RSS in KiB and CPU seconds) when installed, else by
// polling VmHWM in /proc/<pid>/status (the kernel's own high-water mark, so a missed poll loses
// nothing but the tail; no CPU time then). CPU time says more than wall time on a shared machine.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ProcessCost {
  seconds: number;
  peakRssMib: number;
  /** User + system CPU seconds of the process and its threads (10 ms steps); undefined without GNU time. */
  cpuSeconds?: number;
  exitCode: number;
  stderr: string;
}

const GNU_TIME = '/usr/bin/time';

function spawnAndWait(
  command: string,
  args: string[],
  onStart?: (pid: number) => void,
): Promise<{ exitCode: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      if (stderr.length < 64 * 1024) stderr += chunk.toString();
    });
    child.on('error', reject);
    if (child.pid !== undefined) onStart?.(child.pid);
    child.on('close', (code) => resolve({ exitCode: code ?? -1, stderr }));
  });
}

/** Runs `command args` to completion; never throws for a non-zero exit (see exitCode). */
export async function measureProcess(command: string, args: string[]): Promise<ProcessCost> {
  if (existsSync(GNU_TIME)) {
    const dir = await mkdtemp(join(tmpdir(), 'vdisk-bench-time-'));
    try {
      const report = join(dir, 'time.txt');
      // Wall time from our own clock (GNU time's %e has 10 ms steps); peak memory from its %M.
      const started = process.hrtime.bigint();
      const { exitCode, stderr } = await spawnAndWait(GNU_TIME, [
        '-f',
        '%M %U %S',
        '-o',
        report,
        command,
        ...args,
      ]);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const [kib, user, system] = ((await readFile(report, 'utf8')).trim().split('\n').at(-1) ?? '')
        .split(' ')
        .map(Number);
      return {
        seconds,
        peakRssMib: Number(kib) / 1024,
        cpuSeconds: Number(user) + Number(system),
        exitCode,
        stderr,
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  let peakKib = 0;
  let timer: NodeJS.Timeout | undefined;
  const started = process.hrtime.bigint();
  const { exitCode, stderr } = await spawnAndWait(command, args, (pid) => {
    timer = setInterval(() => {
      readFile(`/proc/${pid}/status`, 'utf8').then(
        (status) => {
          const match = /VmHWM:\s+(\d+) kB/.exec(status);
          if (match) peakKib = Math.max(peakKib, Number(match[1]));
        },
        () => undefined,
      );
    }, 20);
  });
  clearInterval(timer);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { seconds, peakRssMib: peakKib / 1024, exitCode, stderr };
}

/**
 * The fastest of `runs` runs, with the highest peak memory and least CPU time seen. A failed run (non-zero
 * exit) never beats one that succeeded, and is retried up to 3 more times: qemu-img's PBKDF2 calibration,
 * for one, fails now and then on a busy machine, and its quick failure must not count as a fast run.
 */
export async function bestOf(runs: number, measure: () => Promise<ProcessCost>): Promise<ProcessCost> {
  const better = (a: ProcessCost, b: ProcessCost): boolean =>
    a.exitCode === 0 && b.exitCode !== 0
      ? true
      : a.exitCode !== 0 && b.exitCode === 0
        ? false
        : a.seconds < b.seconds;
  let best = await measure();
  let retries = 3;
  for (let run = 1; run < runs || (best.exitCode !== 0 && retries-- > 0); run += 1) {
    const next = await measure();
    const peakRssMib = Math.max(best.peakRssMib, next.peakRssMib);
    const cpuSeconds =
      best.cpuSeconds === undefined || next.cpuSeconds === undefined
        ? undefined
        : Math.min(best.cpuSeconds, next.cpuSeconds);
    best = better(next, best) ? { ...next, peakRssMib, cpuSeconds } : { ...best, peakRssMib, cpuSeconds };
  }
  return best;
}

/** One table row: the first cell left-aligned, the others right-aligned, to `widths`. */
export function row(cells: string[], widths: number[]): string {
  return cells
    .map((cell, index) => (index === 0 ? cell.padEnd(widths[index] ?? 0) : cell.padStart(widths[index] ?? 0)))
    .join('  ');
}

/**
 * Seconds of the best of `repeat` warm rounds of `vdisk args` (bench/warm-run.ts: one process, a first
 * untimed round); undefined, with a log line, when it fails.
 */
export function warmRun(
  repeat: number,
  args: string[],
  log: (line: string) => void,
  fresh: string[] = [],
): number | undefined {
  try {
    const out = execFileSync(
      process.execPath,
      [
        join(import.meta.dirname, 'warm-run.ts'),
        `--rounds=${repeat + 1}`,
        ...fresh.map((pair) => `--fresh=${pair}`),
        '--',
        ...args,
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const seconds = Number(out.trim());
    return Number.isFinite(seconds) ? seconds : undefined;
  } catch (err) {
    log(
      `bench: warm run of vdisk ${args.join(' ')} failed: ${err instanceof Error ? err.message : String(err)}`,
    );
    return undefined;
  }
}

/** The `warm s` and `warm x` cells of a row: warm seconds, and their ratio to qemu's whole run ('-' when missing). */
export function warmCells(
  warmSeconds: number | undefined,
  qemuSeconds: number | undefined,
): [string, string] {
  if (warmSeconds === undefined) return ['-', '-'];
  return [warmSeconds.toFixed(3), qemuSeconds === undefined ? '-' : (warmSeconds / qemuSeconds).toFixed(2)];
}
