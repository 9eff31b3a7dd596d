// vdisk measure for the formats qemu-img 7.2 cannot measure (vmdk, vdi, vpc, vhdx, qed, parallels):
// the answer is checked against real files. `--size N` must give the size of a fresh `vdisk create`
// (required) and of an image converted from a fully written source (fully-allocated); measuring a
// sparse qcow2 chain made by qemu-img must give exactly the size of `vdisk convert`'s output, with
// backing data counted, and qemu-img's own conversion must read back equal.

import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { haveTools, run, runStatus, scratchDir } from '../helpers/format-harness.ts';
import { vdisk } from './cli-helpers.ts';

const HAS_QEMU = haveTools(['qemu-img', 'qemu-io'], 'measure-formats.test.ts');
const MiB = 1024 * 1024;

const TARGETS: { format: string; options: string[] }[] = [
  { format: 'vmdk', options: [] },
  { format: 'vdi', options: [] },
  { format: 'vpc', options: [] },
  { format: 'vhdx', options: [] },
  { format: 'vhdx', options: ['-o', 'block_size=1M'] },
  { format: 'vhdx', options: ['-o', 'subformat=fixed'] },
  { format: 'qed', options: [] },
  { format: 'qed', options: ['-o', 'cluster_size=4096,table_size=2'] },
  { format: 'parallels', options: [] },
  { format: 'parallels', options: ['-o', 'cluster_size=64K'] },
];

interface Measured {
  required: number;
  'fully-allocated': number;
}

async function measure(args: string[]): Promise<Measured> {
  const result = await vdisk(['measure', '--output=json', ...args]);
  expect(result).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as Measured;
}

async function sizeOf(path: string): Promise<number> {
  return (await stat(path)).size;
}

describe.skipIf(!HAS_QEMU)('vdisk measure matches the files vdisk makes', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const sizeBytes = 100 * MiB;
  let sparse: string;
  let full: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('measure-formats'));
    // A sparse chain: the base holds two runs, the overlay one more (and a zeroed range over base data).
    const base = join(dir, 'base.qcow2');
    sparse = join(dir, 'top.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(sizeBytes)]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 40M 9M', base]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', sparse]);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x33 70M 5M',
      '-c',
      'write -P 0x44 100663296 64K',
      '-c',
      'write -z 44M 4M',
      sparse,
    ]);
    full = join(dir, 'full.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', full, String(sizeBytes)]);
    run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${sizeBytes}`, full]);
  });
  afterAll(async () => cleanup());

  for (const { format, options } of TARGETS) {
    const label = `${format} ${options.join(' ')}`.trim();
    it(`measures ${label}: --size, a full source and a sparse chain`, async () => {
      const name = label.replace(/[^a-z0-9]+/gi, '-');
      const empty = join(dir, `${name}-empty.img`);
      expect((await vdisk(['create', '-q', '-f', format, ...options, empty, String(sizeBytes)])).code).toBe(
        0,
      );
      const bySize = await measure(['-O', format, ...options, '--size', String(sizeBytes)]);
      expect(bySize.required).toBe(await sizeOf(empty));

      const filled = join(dir, `${name}-full.img`);
      expect((await vdisk(['convert', '-O', format, ...options, full, filled])).code).toBe(0);
      const byFull = await measure(['-O', format, ...options, full]);
      expect(byFull.required).toBe(await sizeOf(filled));
      if (format === 'vpc') {
        // VHD sizes round up to a CHS geometry: fully allocated also counts the blocks past the source's end.
        expect(byFull['fully-allocated'] - byFull.required).toBeGreaterThanOrEqual(0);
        expect(byFull['fully-allocated'] - byFull.required).toBeLessThanOrEqual(2 * (2 * MiB + 512));
      } else {
        expect(byFull['fully-allocated']).toBe(await sizeOf(filled));
      }
      expect(bySize['fully-allocated']).toBe(byFull['fully-allocated']);

      const converted = join(dir, `${name}-sparse.img`);
      expect((await vdisk(['convert', '-O', format, ...options, sparse, converted])).code).toBe(0);
      const bySparse = await measure(['-O', format, ...options, sparse]);
      expect(bySparse.required).toBe(await sizeOf(converted));
      if (options.includes('subformat=fixed')) {
        expect(bySparse.required).toBe(bySparse['fully-allocated']);
      } else {
        expect(bySparse.required).toBeLessThan(bySparse['fully-allocated']);
        // The backing file's data counts: more than the overlay's own clusters alone would need.
        expect(bySparse.required).toBeGreaterThan(bySize.required + 8 * MiB);
      }
      expect(runStatus('qemu-img', ['compare', sparse, converted]).stdout).toContain('Images are identical');
    });
  }

  it('refuses bad options with the option named', async () => {
    const result = await vdisk(['measure', '-O', 'vhdx', '-o', 'block_size=3M', '--size', '1G']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/Block size must be a power of 2/);
  });
});
