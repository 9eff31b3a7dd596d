// vdisk resize (grow) of vhdx and parallels, which qemu-img 7.2 refuses ("does not support resize"):
// qemu-img made the image and is the judge afterwards. The grown image shows the new size in
// `qemu-img info`, checks clean, compares equal on the old range and reads zeros on the new one (even
// when junk sat past the old end inside the last block), and both qemu-io and vdisk then write there.
// Cases cover growth inside the BAT's room and growth that moves the BAT (vhdx: a new BAT region and
// region table through the log; parallels: clusters in the BAT's way copied to the data end).

import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import { haveTools, run, runStatus, SAMPLES_DIR, scratchDir } from '../helpers/format-harness.ts';
import { vdisk } from './cli-helpers.ts';

const HAS_QEMU = haveTools(['qemu-img', 'qemu-io'], 'resize-formats.test.ts');
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface GrowCase {
  name: string;
  format: 'vhdx' | 'parallels';
  createOptions: string[];
  oldSizeBytes: number;
  newSizeBytes: number;
  /** qemu-io commands filling the old range. */
  writes: string[];
  /** What the test expects of the layout afterwards (the BAT moved or stayed). */
  batMoves: boolean;
  /** The old size ends inside a block: junk is planted in the block's unused tail. */
  tailJunk: boolean;
  /**
   * Compare whole images with qemu-img compare; false for huge sizes (qemu 7.2's vhdx has no block
   * status, so compare would read 130 GiB): qemu-io then verifies the written ranges and zero windows.
   */
  compareWhole: boolean;
}

const CASES: GrowCase[] = [
  {
    name: 'vhdx inside the BAT region, from a size that ends mid-block',
    format: 'vhdx',
    createOptions: [],
    oldSizeBytes: 100 * MiB,
    newSizeBytes: 300 * MiB,
    writes: ['write -P 0x11 0 3M', 'write -P 0x22 90M 10M'],
    batMoves: false,
    tailJunk: true,
    compareWhole: true,
  },
  {
    name: 'vhdx past the BAT region (1 MiB blocks, 100 MiB to 130 GiB)',
    format: 'vhdx',
    createOptions: ['-o', 'block_size=1M'],
    oldSizeBytes: 100 * MiB,
    newSizeBytes: 130 * GiB,
    writes: ['write -P 0x11 0 3M', 'write -P 0x22 90M 9M'],
    batMoves: true,
    tailJunk: false,
    compareWhole: false,
  },
  {
    name: 'vhdx fixed (new blocks allocated too)',
    format: 'vhdx',
    createOptions: ['-o', 'subformat=fixed,block_size=1M'],
    oldSizeBytes: 20 * MiB + 512 * 1024,
    newSizeBytes: 40 * MiB,
    writes: ['write -P 0x33 1M 2M', 'write -P 0x44 20M 512K'],
    batMoves: false,
    tailJunk: true,
    compareWhole: true,
  },
  {
    name: 'parallels inside the BAT cluster, from a size that ends mid-cluster',
    format: 'parallels',
    createOptions: [],
    oldSizeBytes: 100 * MiB + 512 * 1024,
    newSizeBytes: 300 * MiB,
    writes: ['write -P 0x11 0 3M', 'write -P 0x22 90M 10M'],
    batMoves: false,
    tailJunk: true,
    compareWhole: true,
  },
  {
    name: 'parallels past the BAT cluster (4 KiB clusters: data moves out of the way)',
    format: 'parallels',
    createOptions: ['-o', 'cluster_size=4K'],
    oldSizeBytes: 2 * MiB,
    newSizeBytes: 64 * MiB,
    writes: ['write -P 0x11 0 300K', 'write -P 0x22 1M 1M'],
    batMoves: true,
    tailJunk: false,
    compareWhole: true,
  },
];

interface QemuInfo {
  'virtual-size': number;
  'actual-size': number;
}

/** Checks with qemu-io that each `[pattern, offset, length]` range of `path` reads as `pattern`. */
function expectPatterns(path: string, format: string, ranges: [number, number, number][]): void {
  for (const [pattern, offsetBytes, lengthBytes] of ranges) {
    const result = runStatus('qemu-io', [
      '-f',
      format,
      '-c',
      `read -P ${pattern} ${offsetBytes} ${lengthBytes}`,
      path,
    ]);
    expect({ pattern, offsetBytes, status: result.status }).toEqual({ pattern, offsetBytes, status: 0 });
  }
}

function info(path: string, format: string): QemuInfo {
  return JSON.parse(run('qemu-img', ['info', '-f', format, '--output=json', path])) as QemuInfo;
}

/** Host offset of guest byte `guestOffsetBytes` when it is stored plainly (vdisk's block status). */
async function hostOffsetOf(
  path: string,
  format: string,
  guestOffsetBytes: number,
): Promise<number | undefined> {
  const device = await openImage(path, { format, readOnly: true });
  try {
    const [extent] = await device.blockStatus(guestOffsetBytes, 1);
    return extent?.hostOffsetBytes;
  } finally {
    await device.close();
  }
}

/** qemu-io's size spelling (`3M`, `300K`, bytes) in bytes. */
function sizeOf(text: string): number {
  const unit = { K: 1024, M: MiB, G: GiB }[text.slice(-1)];
  return unit ? Number(text.slice(0, -1)) * unit : Number(text);
}

describe.skipIf(!HAS_QEMU)('vdisk grows vhdx and parallels images that qemu-img then accepts', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('resize-formats'));
  });
  afterAll(async () => cleanup());

  for (const growCase of CASES) {
    it(`grows ${growCase.name}`, async () => {
      const { format, oldSizeBytes, newSizeBytes } = growCase;
      const path = join(dir, `${format}-${CASES.indexOf(growCase)}.img`);
      const expected = join(dir, `${format}-${CASES.indexOf(growCase)}.raw`);
      run('qemu-img', ['create', '-q', '-f', format, ...growCase.createOptions, path, String(oldSizeBytes)]);
      run('qemu-io', ['-f', format, ...growCase.writes.flatMap((command) => ['-c', command]), path]);
      // Junk past the old end inside the last (partly used) block: it must not surface as guest data.
      run('qemu-io', ['-f', format, '-c', `write -P 0x66 ${oldSizeBytes - 512} 512`, path]);
      const hostLast = await hostOffsetOf(path, format, oldSizeBytes - 1);
      expect(hostLast).toBeDefined();
      const fileSizeBefore = (await stat(path)).size;
      if (growCase.tailJunk && hostLast !== undefined) {
        expect(hostLast + 1 + 4096).toBeLessThanOrEqual(fileSizeBefore);
        const handle = await open(path, 'r+');
        await handle.write(new Uint8Array(4096).fill(0xee), 0, 4096, hostLast + 1);
        await handle.close();
      }
      run('qemu-img', ['convert', '-f', format, '-O', 'raw', path, expected]);
      const batBefore = run('qemu-img', ['check', '-f', format, path]);

      const resized = await vdisk(['resize', '-f', format, path, String(newSizeBytes)]);
      expect(resized).toMatchObject({ code: 0, stdout: 'Image resized.\n', stderr: '' });

      expect(info(path, format)['virtual-size']).toBe(newSizeBytes);
      const check = runStatus('qemu-img', ['check', '-f', format, path]);
      expect({ status: check.status, out: check.stdout + check.stderr }).toMatchObject({ status: 0 });
      run('qemu-img', ['resize', '-q', '-f', 'raw', expected, String(newSizeBytes)]);
      const sameAsExpected = (): void => {
        if (growCase.compareWhole) {
          const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', format, expected, path]);
          expect(compared.stdout).toContain('Images are identical');
        } else {
          expectPatterns(path, format, [
            ...growCase.writes.map((command): [number, number, number] => {
              const [, , pattern, offset, length] = command.split(' ');
              return [Number(pattern), sizeOf(offset!), sizeOf(length!)];
            }),
            [0x66, oldSizeBytes - 512, 512],
            [0, oldSizeBytes, 4096],
            [0, oldSizeBytes + 4096 + MiB, 64 * MiB],
            [0, newSizeBytes - 64 * MiB, 61 * MiB - 512],
          ]);
        }
      };
      sameAsExpected();
      if (format === 'parallels') {
        // More BAT entries: qemu check counts the grown catalog.
        const total = (text: string): number => Number(/\/(\d+) = /.exec(text)?.[1] ?? 0);
        expect(total(check.stdout)).toBeGreaterThan(total(batBefore));
      }

      // qemu-io and vdisk both write into the new range; the result is what a raw disk would hold.
      const qemuAt = oldSizeBytes + 4096;
      const oursAt = newSizeBytes - 3 * MiB - 512;
      run('qemu-io', ['-f', format, '-c', `write -P 0x77 ${qemuAt} 1M`, path]);
      run('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${qemuAt} 1M`, expected]);
      const data = new Uint8Array(2 * MiB + 1024).fill(0x88);
      const device = await openImage(path, { format });
      try {
        expect(device.sizeBytes).toBe(newSizeBytes);
        await device.write(oursAt, data);
      } finally {
        await device.close();
      }
      const handle = await open(expected, 'r+');
      await handle.write(data, 0, data.length, oursAt);
      await handle.close();
      expect(runStatus('qemu-img', ['check', '-f', format, path]).status).toBe(0);
      sameAsExpected();
      expectPatterns(path, format, [
        [0x77, qemuAt, MiB],
        [0x88, oursAt, data.length],
      ]);
      if (growCase.batMoves && format === 'vhdx') {
        // The BAT left its old region: the file grew by at least the new region before any data.
        expect((await stat(path)).size).toBeGreaterThan(fileSizeBefore + MiB);
      }
    }, 120_000);
  }

  it('grows a version-1 (sector-addressed BAT) Parallels sample past its BAT room', async () => {
    const path = join(dir, 'v1.hds');
    const expected = join(dir, 'v1.raw');
    run('cp', [join(SAMPLES_DIR, 'parallels/parallels-v1'), path]);
    run('qemu-img', ['convert', '-f', 'parallels', '-O', 'raw', path, expected]);
    // 16384 entries need 64 KiB + 64 bytes: more than the 64 KiB before data_off, so clusters move.
    expect(await vdisk(['resize', '-f', 'parallels', path, '1G'])).toMatchObject({ code: 0 });
    expect(info(path, 'parallels')['virtual-size']).toBe(GiB);
    const check = runStatus('qemu-img', ['check', '-f', 'parallels', path]);
    expect(check.status).toBe(0);
    expect(check.stdout).toContain('/16384 = ');
    run('qemu-img', ['resize', '-q', '-f', 'raw', expected, String(GiB)]);
    expect(
      runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'parallels', expected, path]).stdout,
    ).toContain('Images are identical');
    run('qemu-io', ['-f', 'parallels', '-c', 'write -P 0x42 900M 1M', path]);
    expectPatterns(path, 'parallels', [[0x42, 900 * MiB, MiB]]);
    expect(runStatus('qemu-img', ['check', '-f', 'parallels', path]).status).toBe(0);
  });

  for (const format of ['vhdx', 'parallels'] as const) {
    it(`refuses to shrink ${format}, even with --shrink, and leaves the image as it was`, async () => {
      const path = join(dir, `shrink.${format}`);
      run('qemu-img', ['create', '-q', '-f', format, path, '64M']);
      run('qemu-io', ['-f', format, '-c', 'write -P 0x11 0 1M', path]);
      const refused = await vdisk(['resize', '--shrink', '-f', format, path, '32M']);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/does not shrink/);
      expect(info(path, format)['virtual-size']).toBe(64 * MiB);
      expect(runStatus('qemu-img', ['check', '-f', format, path]).status).toBe(0);
    });
  }

  it('refuses a vhdx size that is not a whole logical sector, naming the option', async () => {
    const path = join(dir, 'odd.vhdx');
    run('qemu-img', ['create', '-q', '-f', 'vhdx', path, '8M']);
    const refused = await vdisk(['resize', '-f', 'vhdx', path, String(8 * MiB + 100)]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/multiple of the 512-byte logical sector/);
    expect(info(path, 'vhdx')['virtual-size']).toBe(8 * MiB);
  });
});
