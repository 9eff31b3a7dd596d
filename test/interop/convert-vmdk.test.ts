// The vdisk CLI on vmdk, beside qemu-img 7.2: `convert -c -O vmdk -o subformat=streamOptimized` makes a
// compressed image qemu-img checks and compares clean; `info --output=json` gives qemu's format-specific
// object; `convert` from the VMware stream sample to every vmdk subformat and to vpc/vdi reads identical.

import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SAMPLES_DIR, writeSeededRaw } from '../helpers/format-harness.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img');
warnMissing('qemu-img', 'convert-vmdk.test.ts');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratch('convert-vmdk')));
afterAll(async () => cleanup());

describe.skipIf(!HAS_QEMU)('vdisk convert / info / check on vmdk', () => {
  it('convert -c to streamOptimized: compressed, checked and identical in qemu-img', async () => {
    const raw = await writeSeededRaw(dir, 'source.raw', 8 * 1024 * 1024, 3);
    // Compressible content too: a run of repeated text after the seeded data.
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x41 5M 1M', raw]);
    const out = join(dir, 'stream.vmdk');
    const converted = await vdisk([
      'convert',
      '-c',
      '-f',
      'raw',
      '-O',
      'vmdk',
      '-o',
      'subformat=streamOptimized',
      raw,
      out,
    ]);
    expect(converted.stderr).toBe('');
    expect(converted.code).toBe(0);
    expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', raw, out]).stdout).toContain(
      'Images are identical',
    );
    expect(tool('qemu-img', ['check', out]).code).toBe(0);
    const qemuMap = JSON.parse(mustRun('qemu-img', ['map', '--output=json', out])) as Array<{
      data: boolean;
      offset?: number;
    }>;
    expect(qemuMap.some((entry) => entry.data)).toBe(true);
    const plain = join(dir, 'plain.vmdk');
    expect((await vdisk(['convert', '-f', 'raw', '-O', 'vmdk', raw, plain])).code).toBe(0);
    expect((await stat(out)).size).toBeLessThan((await stat(plain)).size);
  });

  it('info --output=json matches qemu-img info for each subformat', async () => {
    for (const subformat of [
      'monolithicSparse',
      'monolithicFlat',
      'twoGbMaxExtentSparse',
      'streamOptimized',
    ]) {
      const path = join(dir, `info-${subformat}.vmdk`);
      mustRun('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, path, '3M']);
      const ours = await vdisk(['info', '--output=json', path]);
      expect(ours.code).toBe(0);
      const [oursJson, theirsJson] = [
        JSON.parse(ours.stdout),
        JSON.parse(mustRun('qemu-img', ['info', '--output=json', path])),
      ];
      for (const key of ['virtual-size', 'format', 'cluster-size', 'format-specific']) {
        expect(oursJson[key], `${subformat} ${key}`).toEqual(theirsJson[key]);
      }
    }
  });

  it('converts the VMware stream sample to each vmdk subformat, vpc and vdi, identical in qemu-img', async () => {
    const sample = join(SAMPLES_DIR, 'vmdk/iotest-version3.vmdk');
    // 16 GiB guest: the flat subformats make sparse files, so only allocated grains are written.
    for (const [format, options] of [
      ['vmdk', 'subformat=monolithicSparse'],
      ['vmdk', 'subformat=twoGbMaxExtentFlat'],
      ['vdi', ''],
      ['vpc', 'force_size=on'],
    ] as const) {
      const out = join(dir, `sample-${format}-${options.replace(/\W/g, '')}.${format}`);
      const converted = await vdisk([
        'convert',
        '-O',
        format,
        ...(options ? ['-o', options] : []),
        sample,
        out,
      ]);
      expect(converted.code, converted.stderr).toBe(0);
      const compared = tool('qemu-img', ['compare', '-F', format, sample, out]);
      expect(compared.stdout, `${format} ${options}`).toContain('Images are identical');
    }
  });
  it('map --output=json equals qemu-img map for vmdk subformats, vdi and vpc', async () => {
    const raw = join(dir, 'map.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', raw, '8M']);
    mustRun('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 7 1M 3M',
      '-c',
      'write -P 9 7M 100k',
      '-c',
      'write -P 3 0 4k',
      raw,
    ]);
    for (const [format, options] of [
      ['vmdk', 'subformat=monolithicSparse'],
      ['vmdk', 'subformat=monolithicFlat'],
      ['vmdk', 'subformat=twoGbMaxExtentFlat'],
      ['vmdk', 'subformat=streamOptimized'],
      ['vdi', 'static=off'],
      ['vpc', 'subformat=dynamic'],
    ] as const) {
      const path = join(dir, `map-${options.replace(/\W/g, '')}.${format}`);
      mustRun('qemu-img', ['convert', '-f', 'raw', '-O', format, '-o', options, raw, path]);
      const ours = await vdisk(['map', '--output=json', path]);
      expect(ours.code).toBe(0);
      expect(JSON.parse(ours.stdout), `${format} ${options}`).toEqual(
        JSON.parse(mustRun('qemu-img', ['map', '--output=json', path])),
      );
    }
  });
  it('measure (beyond qemu 7.2 for these formats) predicts the size convert then writes', async () => {
    const raw = join(dir, 'measure.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', raw, '64M']);
    mustRun('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 1 0 5M',
      '-c',
      'write -P 2 40M 3M',
      '-c',
      'write -P 3 63M 4k',
      raw,
    ]);
    for (const format of ['vmdk', 'vpc', 'vdi']) {
      const measured = await vdisk(['measure', '--output=json', '-O', format, raw]);
      expect(measured.code).toBe(0);
      const out = join(dir, `measured.${format}`);
      expect((await vdisk(['convert', '-O', format, raw, out])).code).toBe(0);
      const required = JSON.parse(measured.stdout).required;
      expect(required, format).toBe((await stat(out)).size);
      const empty = JSON.parse(
        (await vdisk(['measure', '--output=json', '-O', format, '--size', '1G'])).stdout,
      );
      expect(empty.required, format).toBeLessThan(1024 * 1024);
      expect(empty['fully-allocated'], format).toBeGreaterThanOrEqual(1024 * 1024 * 1024);
    }
  });
});
