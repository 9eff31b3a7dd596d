// qcow2 metadata operations beside qemu-img (issue 3's benchmark): internal snapshot create and delete
// on a 10 GiB image with half its clusters allocated, and commit of a two-layer chain. Each tool works
// on its own copy of the same images; a commit changes its base, so each run gets fresh copies (the
// copy is not timed). Run by bench/run.ts, or alone: node bench/qcow2-ops.ts [--repeat=N].

import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeChain, makeGuest } from './make-guest.ts';
import { bestOf, measureProcess, type ProcessCost, row } from './measure-process.ts';

const VDISK_BIN = join(import.meta.dirname, '../bin/vdisk.mjs');
const GIB = 1024;

interface Op {
  name: string;
  /** Prepares the tool's own files (untimed) and returns the arguments of the timed command. */
  prepare: (tool: 'q' | 'v') => string[];
}

function copySparse(from: string, to: string): void {
  execFileSync('cp', ['--sparse=always', '--reflink=auto', from, to]);
}

async function timed(tool: 'q' | 'v', args: string[]): Promise<ProcessCost> {
  return tool === 'q'
    ? measureProcess('qemu-img', args)
    : measureProcess(process.execPath, [VDISK_BIN, ...args]);
}

/** Best of `repeat` runs of `op` for one tool, each prepared afresh (the preparation is not timed). */
function best(op: Op, tool: 'q' | 'v', repeat: number): Promise<ProcessCost> {
  return bestOf(repeat, async () => {
    const cost = await timed(tool, op.prepare(tool));
    if (cost.exitCode !== 0) throw new Error(`${tool} ${op.name} exited ${cost.exitCode}: ${cost.stderr}`);
    return cost;
  });
}

/** Runs the qcow2 operation rows and returns them as a table. */
export async function qcow2OpsBench(options: {
  repeat: number;
  guestMib: number;
  log: (line: string) => void;
}): Promise<string> {
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
    for (const tool of ['q', 'v'] as const) copySparse(path('half.qcow2'), path(`${tool}-half.qcow2`));
    // The chain: a guest in a qcow2 base, an overlay rewriting an eighth of it.
    options.log(`bench: making a two-layer chain over a ${options.guestMib} MiB guest`);
    await makeGuest(path('guest.raw'), options.guestMib);
    makeChain(dir, path('guest.raw'), options.guestMib);
    const ops: Op[] = [
      {
        name: 'snapshot -c (10 GiB, 50%)',
        prepare: (t) => ['snapshot', '-c', 's1', path(`${t}-half.qcow2`)],
      },
      {
        name: 'snapshot -d (10 GiB, 50%)',
        prepare: (t) => ['snapshot', '-d', 's1', path(`${t}-half.qcow2`)],
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
      },
    ];
    const widths = [30, 8, 8, 7, 9, 9];
    const lines = [row(['workload', 'qemu s', 'vdisk s', 'time x', 'qemu MiB', 'vdisk MiB'], widths)];
    for (const op of ops) {
      // snapshot -d needs the snapshot -c before it: the rows run in order for each tool, so keep
      // one run per row for those two and let --repeat apply to commit only.
      const repeat = op.name.startsWith('snapshot') ? 1 : options.repeat;
      options.log(`bench: ${op.name}`);
      const qemu = await best(op, 'q', repeat);
      const vdisk = await best(op, 'v', repeat);
      lines.push(
        row(
          [
            op.name,
            qemu.seconds.toFixed(3),
            vdisk.seconds.toFixed(3),
            (vdisk.seconds / qemu.seconds).toFixed(2),
            qemu.peakRssMib.toFixed(0),
            vdisk.peakRssMib.toFixed(0),
          ],
          widths,
        ),
      );
    }
    // Both tools' results must agree: the snapshot tables are gone again and the commits match.
    for (const tool of ['q', 'v'] as const)
      execFileSync('qemu-img', ['check', '-q', path(`${tool}-half.qcow2`)]);
    execFileSync('qemu-img', ['compare', '-q', path('q/base.qcow2'), path('v/base.qcow2')]);
    execFileSync('qemu-img', ['compare', '-q', path('top.qcow2'), path('v/base.qcow2')]);
    return `\nqcow2 operations, vdisk vs qemu-img\n${lines.join('\n')}\n`;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const repeat = Number(process.argv.find((arg) => arg.startsWith('--repeat='))?.split('=')[1] ?? 1);
  process.stdout.write(
    await qcow2OpsBench({ repeat, guestMib: GIB, log: (line) => process.stderr.write(`${line}\n`) }),
  );
}
