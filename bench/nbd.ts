// NBD throughput benchmark: nbdcopy reads (1 and 4 connections) of a raw and a qcow2 export and
// nbdcopy writes into a qcow2 export, served in the same run by `vdisk serve`, qemu-nbd and
// `nbdkit file` (raw only: Debian 12's nbdkit has no qcow2 decoder). The guest is bench/make-guest.ts's
// (half seeded random data, half zeros: written zeros and holes). Servers take turns within each
// round, so a busy spell on a shared machine hits all of them; the best of the rounds counts.
// Reports MiB/s, the ratio to qemu-nbd and the server's peak RSS.
// Run alone: `node bench/nbd.ts [--size-mib=1024] [--repeat=3] [--baseline=DIR] [--skip-write]
// [--warm | --fresh]`; --baseline also serves with the vdisk checkout in DIR (row `vdisk-base`), so
// before/after share the same rounds. Every copy gets a fresh server, for every server alike. The
// plain read rows time the first copy a fresh server makes: vdisk's then include its JIT warm-up (V8
// compiling the request path during the first ~2,000 requests, ~50-70 ms on this 1 GiB copy) that a
// C server doesn't have. The `warm` rows run one untimed copy on each fresh server first, so they
// measure a server in its steady state, as a long-running attach pod is. Both kinds run by default;
// --fresh or --warm keeps one.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatRegistry } from '../src/engine/formats/registry.ts';
import { makeGuest } from './make-guest.ts';

const VDISK_BIN = join(import.meta.dirname, '../bin/vdisk.mjs');

export interface NbdBenchRow {
  /** What was copied: `read raw`, `read qcow2`, `write qcow2`. */
  workload: string;
  server: 'vdisk' | 'vdisk-base' | 'qemu-nbd' | 'nbdkit';
  connections: number;
  mibPerSecond: number;
  /** Throughput relative to qemu-nbd on the same workload and connection count. */
  ratioToQemuNbd: number | undefined;
  peakRssMib: number;
  /**
   * The server's CPU time (user + system, all threads) for the copy, fewest of the rounds: on a shared
   * machine this moves far less than MiB/s does.
   */
  serverCpuMs: number;
}

/** One copy's measurements. */
interface Sample {
  seconds: number;
  rssMib: number;
  cpuMs: number;
}

export interface NbdBenchOptions {
  sizeMib?: number;
  /** Rounds per case (default 3); the fastest counts (a shared machine's noise only ever slows a run down). */
  repeat?: number;
  /** A vdisk checkout (its bin/vdisk.mjs) served as `vdisk-base` beside this one: before/after in one run. */
  baseline?: string;
  /** Only the read workloads. */
  skipWrite?: boolean;
  /**
   * Reads: true, one untimed copy on each fresh server before the timed one (a long-running server's
   * steady state, as an attach pod is); false, the first copy a fresh server makes (start-up and JIT
   * warm-up included); 'both' (the default), a row of each. Writes stay fresh (a warm-up copy into
   * the same image would make the timed one an overwrite, another workload).
   */
  warm?: boolean | 'both';
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function peakRssMib(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Math.round(Number(match[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

let clockTicksPerSecond: number | undefined;

/** User + system CPU time of a process so far (/proc/PID/stat utime and stime), in ms; 0 when unknown. */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    clockTicksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name start at field 3; utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond;
  } catch {
    return 0;
  }
}

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!existsSync(path)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server for ${path} did not start`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  // vdisk creates the socket inside listen(); give every server a moment past bind.
  await new Promise((resolve) => setTimeout(resolve, 50));
}

let baselineBin: string | undefined;

function startServer(
  server: NbdBenchRow['server'],
  format: string,
  image: string,
  socket: string,
  readOnly: boolean,
): ChildProcess {
  const ro = readOnly ? ['-r'] : [];
  const command =
    server === 'vdisk' || server === 'vdisk-base'
      ? [
          process.execPath,
          server === 'vdisk' ? VDISK_BIN : (baselineBin ?? VDISK_BIN),
          ...['serve', '-t', '-e', '4', ...ro, '-f', format, '-k', socket, image],
        ]
      : server === 'qemu-nbd'
        ? ['qemu-nbd', '-t', '-e', '4', ...ro, '-f', format, '-k', socket, image]
        : ['nbdkit', '-f', ...ro, '-U', socket, 'file', `file=${image}`];
  return spawn(command[0]!, command.slice(1), { stdio: 'ignore', detached: true });
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.pid === undefined) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(-child.pid, 'SIGTERM');
  const timer = setTimeout(() => child.pid !== undefined && process.kill(-child.pid, 'SIGKILL'), 20_000);
  await exited;
  clearTimeout(timer);
}

let socketCounter = 0;

/**
 * Each server's fastest of `repeat` runs (and the highest peak RSS seen), the servers taking turns in
 * every round. A server that fails is left out with a log line.
 */
async function measureRounds(
  servers: readonly NbdBenchRow['server'][],
  repeat: number,
  log: (line: string) => void,
  runOnce: (server: NbdBenchRow['server']) => Promise<Sample>,
): Promise<Map<NbdBenchRow['server'], Sample>> {
  const best = new Map<NbdBenchRow['server'], Sample>();
  const failed = new Set<NbdBenchRow['server']>();
  for (let round = 0; round < repeat; round++) {
    for (const server of servers) {
      if (failed.has(server)) continue;
      try {
        const result = await runOnce(server);
        const previous = best.get(server) ?? {
          seconds: Number.POSITIVE_INFINITY,
          rssMib: 0,
          cpuMs: Number.POSITIVE_INFINITY,
        };
        best.set(server, {
          seconds: Math.min(previous.seconds, result.seconds),
          rssMib: Math.max(previous.rssMib, result.rssMib),
          cpuMs: Math.min(previous.cpuMs, result.cpuMs),
        });
      } catch (err) {
        failed.add(server);
        best.delete(server);
        log(`${server}: failed (${err instanceof Error ? err.message : String(err)})`);
      }
    }
  }
  return best;
}

/** One nbdcopy under one server; returns seconds, the server's peak RSS and its CPU time for the copy. */
async function measure(
  server: NbdBenchRow['server'],
  format: string,
  image: string,
  folder: string,
  connections: number,
  direction: 'read' | 'write',
  source: string,
  warm: boolean,
): Promise<Sample> {
  const socket = join(folder, `${server}-${++socketCounter}.sock`);
  const child = startServer(server, format, image, socket, direction === 'read');
  try {
    await waitForSocket(socket, child);
    const uri = `nbd+unix:///?socket=${socket}`;
    const args =
      direction === 'read'
        ? [`--connections=${connections}`, uri, 'null:']
        : [`--connections=${connections}`, '--flush', source, uri];
    if (warm) execFileSync('nbdcopy', args, { stdio: 'ignore' });
    const cpuBefore = cpuMs(child.pid);
    const started = performance.now();
    execFileSync('nbdcopy', args, { stdio: 'ignore' });
    const seconds = (performance.now() - started) / 1000;
    return { seconds, rssMib: peakRssMib(child.pid), cpuMs: Math.round(cpuMs(child.pid) - cpuBefore) };
  } finally {
    await stopServer(child);
  }
}

/** Runs the whole matrix; skips servers or formats this machine lacks. */
export async function runNbdBench(options: NbdBenchOptions = {}): Promise<NbdBenchRow[]> {
  // make-guest lays the guest out in 4 MiB strides.
  const sizeMib = Math.ceil((options.sizeMib ?? 1024) / 4) * 4;
  const repeat = Math.max(1, options.repeat ?? 3);
  const warmModes = options.warm === 'both' || options.warm === undefined ? [false, true] : [options.warm];
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  for (const tool of ['qemu-img', 'qemu-io', 'nbdcopy', 'qemu-nbd']) {
    if (!hasTool(tool)) throw new Error(`bench/nbd.ts needs ${tool}`);
  }
  baselineBin = options.baseline ? join(options.baseline, 'bin/vdisk.mjs') : undefined;
  if (baselineBin && !existsSync(baselineBin)) throw new Error(`--baseline: ${baselineBin} does not exist`);
  const servers: NbdBenchRow['server'][] = [
    'vdisk',
    ...(baselineBin ? (['vdisk-base'] as const) : []),
    'qemu-nbd',
    ...(hasTool('nbdkit') ? (['nbdkit'] as const) : []),
  ];
  const folder = await mkdtemp(join(tmpdir(), 'vdisk-bench-nbd-'));
  const rows: NbdBenchRow[] = [];
  try {
    const raw = join(folder, 'disk.raw');
    const qcow2 = join(folder, 'disk.qcow2');
    await makeGuest(raw, sizeMib);
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', '-f', 'raw', raw, qcow2]);
    const qcow2Readable = formatRegistry.some((driver) => driver.name === 'qcow2');

    const add = (
      workload: string,
      server: NbdBenchRow['server'],
      connections: number,
      sample: Sample,
    ): void => {
      const row: NbdBenchRow = {
        workload,
        server,
        connections,
        mibPerSecond: Math.round(sizeMib / sample.seconds),
        ratioToQemuNbd: undefined,
        peakRssMib: sample.rssMib,
        serverCpuMs: sample.cpuMs,
      };
      rows.push(row);
      log(
        `${workload.padEnd(17)} ${server.padEnd(9)} x${connections}  ${String(row.mibPerSecond).padStart(6)} MiB/s  cpu ${sample.cpuMs} ms  rss ${sample.rssMib} MiB`,
      );
    };

    const readers = servers.filter((name) => name !== 'nbdkit');
    for (const warm of warmModes) {
      const suffix = warm ? ' warm' : '';
      for (const connections of [1, 4]) {
        const rawResults = await measureRounds(servers, repeat, log, (server) =>
          measure(server, 'raw', raw, folder, connections, 'read', '', warm),
        );
        for (const [server, result] of rawResults) add(`read raw${suffix}`, server, connections, result);
        const qcow2Servers = readers.filter((server) => server !== 'vdisk' || qcow2Readable);
        const qcow2Results = await measureRounds(qcow2Servers, repeat, log, (server) =>
          measure(server, 'qcow2', qcow2, folder, connections, 'read', '', warm),
        );
        for (const [server, result] of qcow2Results) add(`read qcow2${suffix}`, server, connections, result);
      }
    }
    const writers = options.skipWrite ? [] : readers;
    const writeResults = await measureRounds(writers, repeat, log, async (server) => {
      const target = join(folder, `target-${server}.qcow2`);
      try {
        // A fresh image each run: rewriting allocated clusters would measure something else.
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', target, `${sizeMib}M`]);
        const result = await measure(server, 'qcow2', target, folder, 1, 'write', raw, false);
        execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', raw, target]);
        return result;
      } finally {
        await rm(target, { force: true });
      }
    });
    for (const [server, result] of writeResults) add('write qcow2', server, 1, result);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
  for (const row of rows) {
    const reference = rows.find(
      (candidate) =>
        candidate.workload === row.workload &&
        candidate.connections === row.connections &&
        candidate.server === 'qemu-nbd',
    );
    row.ratioToQemuNbd = reference
      ? Math.round((row.mibPerSecond / reference.mibPerSecond) * 100) / 100
      : undefined;
  }
  return rows;
}

/** The rows as a Markdown table. */
export function formatNbdBench(rows: readonly NbdBenchRow[]): string {
  const lines = [
    '| workload | server | conns | MiB/s | vs qemu-nbd | server CPU ms | peak RSS MiB |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const row of rows) {
    lines.push(
      `| ${row.workload} | ${row.server} | ${row.connections} | ${row.mibPerSecond} | ${row.ratioToQemuNbd ?? '-'} | ${row.serverCpuMs} | ${row.peakRssMib} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const numberArg = (name: string): number | undefined => {
    const arg = process.argv.find((candidate) => candidate.startsWith(`--${name}=`));
    return arg ? Number(arg.slice(name.length + 3)) : undefined;
  };
  const baseline = process.argv.find((arg) => arg.startsWith('--baseline='))?.slice('--baseline='.length);
  const rows = await runNbdBench({
    sizeMib: numberArg('size-mib'),
    repeat: numberArg('repeat'),
    baseline,
    skipWrite: process.argv.includes('--skip-write'),
    warm: process.argv.includes('--warm') ? true : process.argv.includes('--fresh') ? false : 'both',
  });
  process.stdout.write(formatNbdBench(rows));
}
