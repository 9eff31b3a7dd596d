// qcow2 metadata operations beside qemu-img (issue 3's benchmark): internal snapshot create and delete
// on a 10 GiB image with half its clusters allocated, and commit of a two-layer chain. Each tool works
// on its own fresh copy of the same image in every run (the copy is not timed); qemu and vdisk runs
// alternate, best of --repeat each. Wall time, and CPU time from `perf stat -e task-clock` (1 ms
// precision; GNU time's 10 ms steps say nothing about a 10 ms command) in separate runs so perf's
// own start-up stays out of the wall time. The warm column times the same operation in a vdisk process
// that has run it once already (bench/warm-run.ts): the engine's cost without Node.js start-up and V8
// warm-up, and `warm x` its ratio to qemu-img's whole run. Run by bench/run.ts, or alone:
// node bench/qcow2-ops.ts [--repeat=N] [--vdisk-bin=PATH (another checkout's bin/vdisk.mjs)].

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeChain, makeGuest } from './make-guest.ts';
import { measureProcess, type ProcessCost, row, warmCells, warmRun } from './measure-process.ts';

const DEFAULT_VDISK_BIN = join(import.meta.dirname, '../bin/vdisk.mjs');
const GIB = 1024;
const PERF = '/usr/bin/perf';

interface Op {
  name: string;
  /** Prepares the tool's own files (untimed) and returns the arguments of the timed command. */
  prepare: (tool: 'q' | 'v') => string[];
  /** For the warm column (bench/warm-run.ts): the arguments, and `SRC:DST` copies made before each round. */
  warm: () => { args: string[]; fresh: string[] };
}

function copySparse(from: string, to: string): void {
  execFileSync('cp', ['--sparse=always', '--reflink=auto', from, to]);
}

function command(tool: 'q' | 'v', args: string[], vdiskBin: string): [string, string[]] {
  return tool === 'q' ? ['qemu-img', args] : [process.execPath, [vdiskBin, ...args]];
}

/** CPU milliseconds of one run (all threads), from perf stat; undefined without perf. */
async function cpuMs(tool: 'q' | 'v', args: string[], vdiskBin: string): Promise<number | undefined> {
  if (!existsSync(PERF)) return undefined;
  const report = join(tmpdir(), `vdisk-bench-perf-${process.pid}.csv`);
  const [file, rest] = command(tool, args, vdiskBin);
  const cost = await measureProcess(PERF, [
    'stat',
    '-e',
    'task-clock',
    '-x,',
    '-o',
    report,
    '--',
    file,
    ...rest,
  ]);
  if (cost.exitCode !== 0)
    throw new Error(`${tool} ${args.join(' ')} exited ${cost.exitCode}: ${cost.stderr}`);
  const line = readFileSync(report, 'utf8')
    .split('\n')
    .find((text) => text.includes('task-clock'));
  rmSync(report, { force: true });
  const value = Number(line?.split(',')[0]);
  return Number.isFinite(value) ? value : undefined;
}

interface Best {
  wall: ProcessCost;
  cpuMs: number | undefined;
}

/**
 * Best of `repeat` runs of `op` for both tools, alternating qemu and vdisk so both see the same load;
 * each run on a fresh preparation. Fastest wall time, least CPU, highest peak memory.
 */
async function best(op: Op, repeat: number, vdiskBin: string): Promise<Record<'q' | 'v', Best>> {
  const results: Partial<Record<'q' | 'v', Best>> = {};
  for (let run = 0; run < repeat; run++) {
    for (const tool of ['q', 'v'] as const) {
      const [file, args] = command(tool, op.prepare(tool), vdiskBin);
      const wall = await measureProcess(file, args);
      if (wall.exitCode !== 0) throw new Error(`${tool} ${op.name} exited ${wall.exitCode}: ${wall.stderr}`);
      const cpu = await cpuMs(tool, op.prepare(tool), vdiskBin);
      const previous = results[tool];
      if (!previous) {
        results[tool] = { wall, cpuMs: cpu };
        continue;
      }
      const peakRssMib = Math.max(previous.wall.peakRssMib, wall.peakRssMib);
      results[tool] = {
        wall: { ...(wall.seconds < previous.wall.seconds ? wall : previous.wall), peakRssMib },
        cpuMs: cpu === undefined || previous.cpuMs === undefined ? cpu : Math.min(cpu, previous.cpuMs),
      };
    }
  }
  return results as Record<'q' | 'v', Best>;
}

/** Runs the qcow2 operation rows and returns them as a table. */
export async function qcow2OpsBench(options: {
  repeat: number;
  guestMib: number;
  log: (line: string) => void;
  vdiskBin?: string;
}): Promise<string> {
  const vdiskBin = options.vdiskBin ?? DEFAULT_VDISK_BIN;
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-bench-ops-'));
  const path = (name: string): string => join(dir, name);
  try {
    // 10 GiB virtual, the first 5 GiB allocated (preallocation=metadata: every cluster mapped,
    // sparse on the host so the bench needs no 5 GiB of disk).
    options.log('bench: making a 10 GiB qcow2 with 5 GiB allocated');
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'preallocation=metadata',
      path('half.qcow2'),
      '5G',
    ]);
    execFileSync('qemu-img', ['resize', '-q', path('half.qcow2'), '10G']);
    // The same image with one snapshot, made by qemu-img, for both tools to delete.
    copySparse(path('half.qcow2'), path('half-snap.qcow2'));
    execFileSync('qemu-img', ['snapshot', '-c', 's1', path('half-snap.qcow2')]);
    // The chain: a guest in a qcow2 base, an overlay rewriting an eighth of it.
    options.log(`bench: making a two-layer chain over a ${options.guestMib} MiB guest`);
    await makeGuest(path('guest.raw'), options.guestMib);
    makeChain(dir, path('guest.raw'), options.guestMib);
    const ops: Op[] = [
      {
        name: 'snapshot -c (10 GiB, 50%)',
        prepare: (t) => {
          copySparse(path('half.qcow2'), path(`${t}-create.qcow2`));
          return ['snapshot', '-c', 's1', path(`${t}-create.qcow2`)];
        },
        warm: () => ({
          args: ['snapshot', '-c', 's1', path('w-create.qcow2')],
          fresh: [`${path('half.qcow2')}:${path('w-create.qcow2')}`],
        }),
      },
      {
        name: 'snapshot -d (10 GiB, 50%)',
        prepare: (t) => {
          copySparse(path('half-snap.qcow2'), path(`${t}-delete.qcow2`));
          return ['snapshot', '-d', 's1', path(`${t}-delete.qcow2`)];
        },
        warm: () => ({
          args: ['snapshot', '-d', 's1', path('w-delete.qcow2')],
          fresh: [`${path('half-snap.qcow2')}:${path('w-delete.qcow2')}`],
        }),
      },
      {
        name: `commit (2 layers, ${options.guestMib} MiB)`,
        prepare: (t) => {
          // Each tool's chain is a copy in its own folder; the overlay names its base relatively.
          mkdirSync(path(t), { recursive: true });
          copySparse(path('base.qcow2'), path(`${t}/base.qcow2`));
          copySparse(path('top.qcow2'), path(`${t}/top.qcow2`));
          const top = path(`${t}/top.qcow2`);
          return ['commit', '-q', top];
        },
        warm: () => {
          mkdirSync(path('w'), { recursive: true });
          return {
            args: ['commit', '-q', path('w/top.qcow2')],
            fresh: ['base', 'top'].map((name) => `${path(`${name}.qcow2`)}:${path(`w/${name}.qcow2`)}`),
          };
        },
      },
    ];
    const widths = [30, 8, 8, 7, 8, 8, 7, 9, 9, 8, 7];
    const lines = [
      row(
        [
          'workload',
          'qemu s',
          'vdisk s',
          'time x',
          'qemu ms',
          'vdisk ms',
          'cpu x',
          'qemu MiB',
          'vdisk MiB',
          'warm s',
          'warm x',
        ],
        widths,
      ),
    ];
    for (const op of ops) {
      options.log(`bench: ${op.name}`);
      const { q, v } = await best(op, options.repeat, vdiskBin);
      // The same operation in a warm vdisk process: the engine's cost without start-up and warm-up.
      const { args, fresh } = op.warm();
      const warm = warmRun(options.repeat, args, options.log, fresh);
      lines.push(
        row(
          [
            op.name,
            q.wall.seconds.toFixed(3),
            v.wall.seconds.toFixed(3),
            (v.wall.seconds / q.wall.seconds).toFixed(2),
            q.cpuMs?.toFixed(0) ?? '-',
            v.cpuMs?.toFixed(0) ?? '-',
            q.cpuMs !== undefined && v.cpuMs !== undefined ? (v.cpuMs / q.cpuMs).toFixed(2) : '-',
            q.wall.peakRssMib.toFixed(0),
            v.wall.peakRssMib.toFixed(0),
            ...warmCells(warm, q.wall.seconds),
          ],
          widths,
        ),
      );
    }
    // Both tools' results must agree: clean images, the snapshot there after -c and gone after -d,
    // and the commits match.
    for (const tool of ['q', 'v'] as const) {
      for (const name of ['create', 'delete'])
        execFileSync('qemu-img', ['check', '-q', path(`${tool}-${name}.qcow2`)]);
      const list = (name: string): string =>
        execFileSync('qemu-img', ['snapshot', '-l', path(`${tool}-${name}.qcow2`)], { encoding: 'utf8' });
      if (!/\bs1\b/.test(list('create')) || /\bs1\b/.test(list('delete')))
        throw new Error(`${tool}: snapshot tables after -c / -d are not what they should be`);
    }
    execFileSync('qemu-img', ['compare', '-q', path('q/base.qcow2'), path('v/base.qcow2')]);
    execFileSync('qemu-img', ['compare', '-q', path('top.qcow2'), path('v/base.qcow2')]);
    return `\nqcow2 operations, vdisk vs qemu-img\n${lines.join('\n')}\n`;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const repeat = Number(process.argv.find((arg) => arg.startsWith('--repeat='))?.split('=')[1] ?? 1);
  const vdiskBin = process.argv.find((arg) => arg.startsWith('--vdisk-bin='))?.split('=')[1];
  process.stdout.write(
    await qcow2OpsBench({
      repeat,
      guestMib: GIB,
      vdiskBin,
      log: (line) => process.stderr.write(`${line}\n`),
    }),
  );
}
