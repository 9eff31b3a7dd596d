// `npm run bench`: vdisk beside qemu-img in one run, on one 1 GiB guest (half seeded random data,
// half zeros). For each workload it prints both tools' wall time and peak RSS and the ratio
// vdisk/qemu (time ratio < 1 means vdisk was faster), and the ratio of CPU times (steadier than wall
// time when the machine is shared). Then bench/nbd.ts (NBD throughput), if present,
// bench/qcow2-ops.ts (snapshot create/delete, commit) and bench/controller.ts.
// Options: --size-mib=N (default 1024), --repeat=N (best time of N runs, default 1; the machine may
// be shared), --only=TEXT (run only the workloads whose name contains one of the comma-separated
// TEXTs, e.g. --only=vdi,vhdx; the check row needs `convert raw -> qcow2`; then no NBD, qcow2-ops or
// controller bench),
// --vdisk-bin=PATH (another vdisk entry point, e.g. an older checkout's, for before/after rows),
// --from-source (measure the sources, not the bundle), --skip-nbd, --skip-ops, --skip-stream, --keep
// (leave the scratch folder). vdisk is measured as installed: `npm run build`'s bundle (built first),
// which bin/vdisk.mjs runs.
// bench/stream.ts adds convert to and from pipes (qemu-img has no such mode; its file convert for scale).
// The `warm s` column times each command again in a vdisk process that has already run it once
// (bench/warm-run.ts), as the operator's long-running pods do: the engine's cost without Node.js
// start-up and V8 warm-up; `warm x` is its ratio to qemu-img's whole run.

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCli } from '../scripts/build-cli.ts';
import { makeChain, makeGuest } from './make-guest.ts';
import { bestOf, measureProcess, row, warmCells, warmRun } from './measure-process.ts';

const DEFAULT_VDISK_BIN = join(import.meta.dirname, '../bin/vdisk.mjs');

interface Workload {
  name: string;
  /** Arguments after `qemu-img` / `vdisk`, with `{tool}` replaced by `q` or `v` in output names. */
  args: (tool: 'q' | 'v') => string[];
  /** For convert: the output to check with qemu-img compare against the source. */
  verify?: { source: string; output: (tool: 'q' | 'v') => string };
}

function argument(name: string): string | undefined {
  return process.argv.find((arg) => arg.startsWith(`--${name}=`))?.split('=')[1];
}

/** vmdk (monolithicSparse and streamOptimized), vdi, vpc and vhdx: the conversions issue 4 benchmarks. */
const OTHER_FORMATS: ReadonlyArray<{ format: string; options: string[]; label: string }> = [
  { format: 'vmdk', options: [], label: 'vmdk' },
  { format: 'vmdk', options: ['-o', 'subformat=streamOptimized'], label: 'vmdk-stream' },
  { format: 'vdi', options: [], label: 'vdi' },
  { format: 'vpc', options: [], label: 'vpc' },
  { format: 'vhdx', options: [], label: 'vhdx' },
];

async function main(): Promise<void> {
  const sizeMib = Number(argument('size-mib') ?? 1024);
  const repeat = Math.max(1, Number(argument('repeat') ?? 1));
  const vdiskBin = argument('vdisk-bin') ?? DEFAULT_VDISK_BIN;
  let entry = `${vdiskBin} (as its checkout has it)`;
  if (process.argv.includes('--from-source')) {
    process.env.VDISK_FROM_SOURCE = '1';
    entry = `${vdiskBin} from source (VDISK_FROM_SOURCE=1)`;
  } else if (vdiskBin === DEFAULT_VDISK_BIN) {
    entry = `bin/vdisk.mjs running the bundle of ${(await buildCli()).length} source files (npm run build)`;
  }
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-bench-'));
  const path = (name: string): string => join(dir, name);
  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  try {
    log(`bench: vdisk is ${entry}`);
    log(`bench: making a ${sizeMib} MiB guest in ${dir}`);
    await makeGuest(path('src.raw'), sizeMib);
    await writeFile(path('tiny.raw'), Buffer.alloc(1 << 20));
    // The chain: a qcow2 base made by qemu-img, and an overlay rewriting an eighth of the guest.
    makeChain(dir, path('src.raw'), sizeMib);
    // An encrypted qcow2 (issue 3), keyslot PBKDF2 kept short: the data path is what is measured.
    const secret = ['--object', 'secret,id=sec0,data=bench-passphrase'];
    const luksOptions = ['-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10'];
    const luksSource = `driver=qcow2,file.filename=${path('base-luks.qcow2')},encrypt.key-secret=sec0`;

    const workloads: Workload[] = [
      {
        name: 'convert raw -> qcow2',
        args: (t) => ['convert', '-f', 'raw', '-O', 'qcow2', path('src.raw'), path(`${t}-1.qcow2`)],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-1.qcow2`) },
      },
      {
        name: 'convert qcow2 -> raw',
        args: (t) => ['convert', '-f', 'qcow2', '-O', 'raw', path('base.qcow2'), path(`${t}-2.raw`)],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-2.raw`) },
      },
      {
        name: 'convert raw -> qcow2 -c',
        args: (t) => ['convert', '-c', '-f', 'raw', '-O', 'qcow2', path('src.raw'), path(`${t}-3.qcow2`)],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-3.qcow2`) },
      },
      {
        name: 'convert qcow2 chain -> qcow2',
        args: (t) => ['convert', '-O', 'qcow2', path('top.qcow2'), path(`${t}-4.qcow2`)],
        verify: { source: path('top.qcow2'), output: (t) => path(`${t}-4.qcow2`) },
      },
      { name: 'check (raw -> qcow2 result)', args: (t) => ['check', path(`${t}-1.qcow2`)] },
      // The fixed cost of one command, the floor under every short row: a C binary starts in ~2 ms, a
      // Node.js process in ~20 ms before any vdisk code runs (`node -e 0` on this machine).
      { name: 'start-up (info, 1 MiB raw)', args: () => ['info', '-f', 'raw', path('tiny.raw')] },
      // qemu-img convert never syncs its target (cache=unsafe is its default); vdisk's default ends with
      // fdatasync ("flush means durable"). These rows give both tools the same work: -t unsafe.
      {
        name: 'convert raw -> qcow2 -t unsafe',
        args: (t) => [
          'convert',
          '-t',
          'unsafe',
          '-f',
          'raw',
          '-O',
          'qcow2',
          path('src.raw'),
          path(`${t}-1u.qcow2`),
        ],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-1u.qcow2`) },
      },
      {
        name: 'convert qcow2 -> raw -t unsafe',
        args: (t) => [
          'convert',
          '-t',
          'unsafe',
          '-f',
          'qcow2',
          '-O',
          'raw',
          path('base.qcow2'),
          path(`${t}-2u.raw`),
        ],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-2u.raw`) },
      },
      // And both durable: qemu-img -t writeback flushes (fdatasync) on close, as vdisk's default does.
      {
        name: 'convert raw -> qcow2 durable',
        args: (t) => [
          'convert',
          ...(t === 'q' ? ['-t', 'writeback'] : []),
          '-f',
          'raw',
          '-O',
          'qcow2',
          path('src.raw'),
          path(`${t}-1d.qcow2`),
        ],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-1d.qcow2`) },
      },
      {
        name: 'convert raw -> qcow2 -c zstd',
        args: (t) => [
          'convert',
          '-c',
          '-o',
          'compression_type=zstd',
          '-f',
          'raw',
          '-O',
          'qcow2',
          path('src.raw'),
          path(`${t}-5.qcow2`),
        ],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-5.qcow2`) },
      },
      {
        name: 'convert raw -> qcow2 luks',
        args: (t) => [
          'convert',
          ...secret,
          '-O',
          'qcow2',
          ...luksOptions,
          path('src.raw'),
          path(`${t}-luks.qcow2`),
        ],
      },
      {
        name: 'convert qcow2 luks -> raw',
        args: (t) => ['convert', ...secret, '--image-opts', luksSource, '-O', 'raw', path(`${t}-luks.raw`)],
        verify: { source: path('src.raw'), output: (t) => path(`${t}-luks.raw`) },
      },
      // The other formats users bring (issue 4): to each from raw, and from a qemu-img-made image back to
      // raw; then the same with -t unsafe, the same work for both tools (vdisk's default ends with
      // fdatasync, qemu-img's never syncs).
      ...OTHER_FORMATS.flatMap(({ format, options, label }): Workload[] =>
        [[], ['-t', 'unsafe']].flatMap((cache): Workload[] => {
          const suffix = cache.length > 0 ? ' -t unsafe' : '';
          const tag = cache.length > 0 ? 'u' : '';
          return [
            {
              name: `convert raw -> ${label}${suffix}`,
              args: (t) => [
                'convert',
                ...cache,
                ...options,
                ...['-f', 'raw', '-O', format],
                path('src.raw'),
                path(`${t}-${label}${tag}.img`),
              ],
              verify: { source: path('src.raw'), output: (t) => path(`${t}-${label}${tag}.img`) },
            },
            {
              name: `convert ${label} -> raw${suffix}`,
              args: (t) => [
                'convert',
                ...cache,
                ...['-f', format, '-O', 'raw'],
                path(`base-${label}.img`),
                path(`${t}-${label}${tag}.raw`),
              ],
              verify: { source: path('src.raw'), output: (t) => path(`${t}-${label}${tag}.raw`) },
            },
          ];
        }),
      ),
    ];

    const only = argument('only')?.split(',');
    const selected = only
      ? workloads.filter((workload) => only.some((text) => workload.name.includes(text)))
      : workloads;
    for (const { format, options, label } of OTHER_FORMATS) {
      if (!selected.some((workload) => workload.name.startsWith(`convert ${label} -> raw`))) continue;
      execFileSync('qemu-img', [
        'convert',
        ...options,
        '-f',
        'raw',
        '-O',
        format,
        path('src.raw'),
        path(`base-${label}.img`),
      ]);
    }
    // qemu's PBKDF2 calibration fails now and then on a coarse thread clock; retry it.
    for (
      let attempt = 1;
      selected.some((workload) => workload.name === 'convert qcow2 luks -> raw');
      attempt++
    ) {
      try {
        execFileSync(
          'qemu-img',
          ['convert', ...secret, '-O', 'qcow2', ...luksOptions, path('src.raw'), path('base-luks.qcow2')],
          { stdio: 'ignore' },
        );
        break;
      } catch (err) {
        if (attempt >= 5) throw err;
      }
    }
    // Both tools start with the sources in the page cache.
    execFileSync('cat', [path('src.raw'), path('base.qcow2'), path('top.qcow2')], {
      stdio: 'ignore',
      maxBuffer: 0,
    });

    const widths = [38, 9, 9, 7, 10, 10, 7, 7, 8, 7];
    const lines = [
      row(
        [
          'workload',
          'qemu s',
          'vdisk s',
          'time x',
          'qemu MiB',
          'vdisk MiB',
          'rss x',
          'cpu x',
          'warm s',
          'warm x',
        ],
        widths,
      ),
    ];
    for (const workload of selected) {
      log(`bench: ${workload.name}`);
      const qemu = await bestOf(repeat, () => measureProcess('qemu-img', workload.args('q')));
      const vdisk = await bestOf(repeat, () =>
        measureProcess(process.execPath, [vdiskBin, ...workload.args('v')]),
      );
      for (const [tool, cost] of [
        ['qemu-img', qemu],
        ['vdisk', vdisk],
      ] as const) {
        if (cost.exitCode !== 0)
          log(`bench: ${tool} ${workload.name} exited ${cost.exitCode}: ${cost.stderr.trim()}`);
      }
      // The same command in a warm vdisk process (bench/warm-run.ts): the engine without start-up.
      const warmSeconds = vdisk.exitCode === 0 ? warmRun(repeat, workload.args('v'), log) : undefined;
      let note = '';
      const failed = [qemu.exitCode !== 0 && 'qemu-img', vdisk.exitCode !== 0 && 'vdisk'].filter(Boolean);
      if (failed.length > 0) note = `  (${failed.join(' and ')} FAILED: no ratio)`;
      else if (workload.verify) {
        try {
          execFileSync('qemu-img', ['compare', workload.verify.source, workload.verify.output('v')], {
            stdio: 'ignore',
          });
        } catch {
          note = '  (vdisk output DIFFERS)';
        }
      }
      lines.push(
        row(
          [
            workload.name,
            qemu.seconds.toFixed(3),
            vdisk.seconds.toFixed(3),
            failed.length > 0 ? '-' : (vdisk.seconds / qemu.seconds).toFixed(2),
            qemu.peakRssMib.toFixed(0),
            vdisk.peakRssMib.toFixed(0),
            (vdisk.peakRssMib / qemu.peakRssMib).toFixed(2),
            // CPU seconds come in 10 ms steps: a ratio to qemu's 0.00 would say nothing.
            vdisk.cpuSeconds !== undefined && qemu.cpuSeconds !== undefined && qemu.cpuSeconds >= 0.05
              ? (vdisk.cpuSeconds / qemu.cpuSeconds).toFixed(2)
              : '-',
            ...warmCells(warmSeconds, failed.length > 0 ? undefined : qemu.seconds),
          ],
          widths,
        ) + note,
      );
    }
    process.stdout.write(
      `\nvdisk vs qemu-img ${execFileSync('qemu-img', ['--version'], { encoding: 'utf8' })
        .split('\n')[0]
        ?.replace(
          /^qemu-img version /,
          '',
        )}, ${sizeMib} MiB guest (half data, half zeros)\nvdisk: ${entry}\n`,
    );
    process.stdout.write(`${lines.join('\n')}\n`);
    if (!process.argv.includes('--skip-stream')) {
      const { streamBench } = await import('./stream.ts');
      process.stdout.write(await streamBench({ path, best: (measure) => bestOf(repeat, measure), log }));
    }

    const nbdBench = join(import.meta.dirname, 'nbd.ts');
    if (argument('only') !== undefined) return;
    if (!process.argv.includes('--skip-nbd') && existsSync(nbdBench)) {
      const { runNbdBench, formatNbdBench } = (await import('./nbd.ts')) as typeof import('./nbd.ts');
      process.stdout.write(`\n${formatNbdBench(await runNbdBench({ sizeMib, log }))}\n`);
    }
    if (!process.argv.includes('--skip-ops')) {
      const { qcow2OpsBench } = await import('./qcow2-ops.ts');
      process.stdout.write(await qcow2OpsBench({ repeat, guestMib: sizeMib, log, vdiskBin }));
    }
    process.stdout.write(await (await import('./controller.ts')).controllerBenchReport(process.argv, log));
  } finally {
    if (process.argv.includes('--keep')) log(`bench: kept ${dir}`);
    else await rm(dir, { recursive: true, force: true });
  }
}

await main();
