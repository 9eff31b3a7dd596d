// Crash consistency of growing vhdx and parallels images (one file for both: the sweep is the same, only
// the verdict differs). A HostFile that stops persisting after its N-th write is swept over the whole
// resize (open, grow, flush, close); at every cut qemu-img must find the old image or the new one, never
// a mix: after qemu's own repair of what a crash may leave (vhdx: log replay; parallels: the in-use
// mark) `qemu-img check` is clean, the size is the old or the new one and the guest reads as before
// with zeros past the old end.

import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CuttingFile, openWithCut } from '../../../helpers/cutting-file.ts';
import { haveTools, run, runStatus, scratchDir } from '../../../helpers/format-harness.ts';

const HAS_QEMU = haveTools(['qemu-img', 'qemu-io'], 'grow-crash.test.ts');
const MiB = 1024 * 1024;

interface SweepCase {
  name: string;
  format: 'vhdx' | 'parallels';
  createOptions: string[];
  oldSizeBytes: number;
  newSizeBytes: number;
  /** `[pattern, offsetBytes, lengthBytes]` written by qemu-io before the resize. */
  writes: [number, number, number][];
}

const CASES: SweepCase[] = [
  {
    name: 'vhdx, BAT grows in place',
    format: 'vhdx',
    createOptions: [],
    oldSizeBytes: 20 * MiB + 512 * 1024,
    newSizeBytes: 72 * MiB,
    writes: [
      [0x11, 0, 3 * MiB],
      [0x22, 17 * MiB, 3 * MiB + 512 * 1024],
    ],
  },
  {
    name: 'vhdx, BAT moves to a new region (1 MiB blocks, to 130 GiB)',
    format: 'vhdx',
    createOptions: ['-o', 'block_size=1M'],
    oldSizeBytes: 20 * MiB,
    newSizeBytes: 130 * 1024 * MiB,
    writes: [
      [0x11, 0, 3 * MiB],
      [0x22, 17 * MiB, 3 * MiB],
    ],
  },
  {
    name: 'parallels, clusters move out of the larger BAT',
    format: 'parallels',
    createOptions: ['-o', 'cluster_size=4K'],
    oldSizeBytes: 2 * MiB,
    newSizeBytes: 64 * MiB,
    writes: [
      [0x11, 0, 300 * 1024],
      [0x22, MiB, MiB],
    ],
  },
];

/** Opens read-write through a CuttingFile, grows, flushes and closes; stops quietly after the cut. */
async function growWithCut(path: string, format: string, newSizeBytes: number, cut: number): Promise<number> {
  let cutting: () => CuttingFile | undefined = () => undefined;
  try {
    const opened = await openWithCut(path, cut, { format });
    const device = opened.device;
    cutting = opened.cutting;
    try {
      await device.resize!(newSizeBytes, { shrink: false });
      await device.flush();
    } finally {
      await device.close();
    }
  } catch (err) {
    // After the cut the driver may read back what it believes it wrote: a dead process does nothing more.
    if (!cutting()?.isCut) throw err;
  }
  return cutting()?.writeCount ?? 0;
}

/** qemu-io reads: each written range as written, zero windows around the old end and at the new end. */
function expectGuest(path: string, sweep: SweepCase, sizeBytes: number, cut: number): void {
  const ranges: [number, number, number][] = [...sweep.writes];
  if (sizeBytes > sweep.oldSizeBytes)
    ranges.push([0, sweep.oldSizeBytes, 8 * MiB], [0, sizeBytes - 8 * MiB, 8 * MiB]);
  for (const [pattern, offsetBytes, lengthBytes] of ranges) {
    const result = runStatus('qemu-io', [
      '-f',
      sweep.format,
      '-c',
      `read -P ${pattern} ${offsetBytes} ${lengthBytes}`,
      path,
    ]);
    if (result.status !== 0)
      expect({ cut, pattern, offsetBytes, out: result.stdout }).toEqual({
        cut,
        pattern,
        offsetBytes,
        out: 'ok',
      });
  }
}

describe.skipIf(!HAS_QEMU)('growing survives a crash after any write', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('grow-crash'));
  });
  afterAll(async () => cleanup());

  for (const sweep of CASES) {
    it(sweep.name, async () => {
      const { format } = sweep;
      const pristine = join(dir, `${format}-pristine`);
      run('qemu-img', [
        'create',
        '-q',
        '-f',
        format,
        ...sweep.createOptions,
        pristine,
        String(sweep.oldSizeBytes),
      ]);
      run('qemu-io', [
        '-f',
        format,
        ...sweep.writes.flatMap(([pattern, at, length]) => ['-c', `write -P ${pattern} ${at} ${length}`]),
        pristine,
      ]);
      const dry = join(dir, `${format}-dry`);
      await copyFile(pristine, dry);
      const totalWrites = await growWithCut(dry, format, sweep.newSizeBytes, Number.POSITIVE_INFINITY);
      expect(totalWrites).toBeGreaterThan(3);
      const stride = Math.max(1, Math.floor(totalWrites / 40));
      const sizesSeen = new Set<number>();
      for (let cut = 0; cut <= totalWrites; cut += stride) {
        const path = join(dir, `${format}-cut`);
        await copyFile(pristine, path);
        await growWithCut(path, format, sweep.newSizeBytes, cut);
        const before = runStatus('qemu-img', ['check', '-f', format, '--output=json', path]);
        if (format === 'parallels') {
          // A crash while open read-write leaves the in-use mark (qemu counts it as one corruption and
          // repairs it); nothing else may be wrong.
          const report = JSON.parse(before.stdout || '{}') as {
            corruptions?: number;
            'check-errors'?: number;
          };
          expect({ cut, corruptions: report.corruptions ?? 0 }).toEqual({
            cut,
            corruptions: report.corruptions === 1 ? 1 : 0,
          });
          expect(report['check-errors'] ?? 0).toBe(0);
        }
        // qemu's repair: a vhdx log replay (which qemu refuses to do read-only), the parallels mark.
        const repaired = runStatus('qemu-img', ['check', '-r', 'all', '-f', format, path]);
        expect({ cut, status: repaired.status, out: repaired.stdout + repaired.stderr }).toMatchObject({
          cut,
          status: 0,
        });
        const check = runStatus('qemu-img', ['check', '-f', format, path]);
        expect({ cut, status: check.status, out: check.stdout + check.stderr }).toMatchObject({
          cut,
          status: 0,
        });
        const info = JSON.parse(run('qemu-img', ['info', '-f', format, '--output=json', path])) as {
          'virtual-size': number;
        };
        const sizeBytes = info['virtual-size'];
        expect([sweep.oldSizeBytes, sweep.newSizeBytes]).toContain(sizeBytes);
        sizesSeen.add(sizeBytes);
        expectGuest(path, sweep, sizeBytes, cut);
      }
      // The sweep saw both outcomes: cuts before the switch keep the old size, the last one has the new.
      expect([...sizesSeen].sort((a, b) => a - b)).toEqual([sweep.oldSizeBytes, sweep.newSizeBytes]);
    }, 300_000);
  }
});
