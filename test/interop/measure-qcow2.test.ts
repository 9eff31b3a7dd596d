// vdisk's qcow2 measure gives the numbers of `qemu-img measure -O qcow2 --output=json` (required,
// fully-allocated, bitmaps) for --size with every option that changes them, and for raw and qcow2 sources
// (sparse, compressed, backing chains).

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeasureResult } from '../../src/engine/formats/driver.ts';
import { findDriver } from '../../src/engine/formats/registry.ts';
import { openImage } from '../../src/engine/open.ts';
import { has, run, scratchDir, writeSeededRaw } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU) console.warn('SKIPPED measure-qcow2.test.ts: qemu-img not found (apt-get install qemu-utils)');

function qemuMeasure(args: string[], options: Record<string, string>): MeasureResult {
  const optionText = Object.entries(options)
    .map(([key, value]) => `${key}=${value}`)
    .join(',');
  const json = JSON.parse(
    run('qemu-img', [
      'measure',
      '-O',
      'qcow2',
      '--output=json',
      ...(optionText ? ['-o', optionText] : []),
      ...args,
    ]),
  ) as {
    required: number;
    'fully-allocated': number;
    bitmaps?: number;
  };
  const result: MeasureResult = {
    requiredBytes: json.required,
    fullyAllocatedBytes: json['fully-allocated'],
  };
  if (json.bitmaps !== undefined) result.bitmapsBytes = json.bitmaps;
  return result;
}

async function vdiskMeasure(
  sizeBytes: number,
  options: Record<string, string>,
  sourcePath?: string,
): Promise<MeasureResult> {
  const source = sourcePath ? await openImage(sourcePath, { readOnly: true }) : undefined;
  try {
    const measure = findDriver('qcow2').measure;
    if (!measure) throw new Error('qcow2 driver has no measure');
    return await measure({ sizeBytes: source?.sizeBytes ?? sizeBytes, options, source });
  } finally {
    await source?.close();
  }
}

describe.skipIf(!HAS_QEMU)('qcow2 measure matches qemu-img measure', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let raw: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    raw = await writeSeededRaw(dir, 'seed.raw', 6 << 20, 5);
  });
  afterAll(async () => cleanup());

  const sizes: Array<[number, Record<string, string>]> = [
    [1 << 30, {}],
    [1 << 30, { cluster_size: '512' }],
    [100 * 1024 ** 3, { refcount_bits: '1' }],
    [5_000_000, { cluster_size: '2M', refcount_bits: '64' }],
    [1024 ** 4, { cluster_size: '4096' }],
    [1 << 30, { preallocation: 'full' }],
    [1 << 30, { preallocation: 'metadata', compat: '0.10' }],
    [0, {}],
    [1 << 30, { extended_l2: 'on' }],
    [3 << 20, { extended_l2: 'on', cluster_size: '16384', preallocation: 'metadata' }],
  ];
  for (const [sizeBytes, options] of sizes) {
    it(`--size ${sizeBytes} ${JSON.stringify(options)}`, async () => {
      expect(await vdiskMeasure(sizeBytes, options)).toEqual(
        qemuMeasure(['--size', String(sizeBytes)], options),
      );
    });
  }

  it('raw, qcow2, compressed and backed sources', async () => {
    const flat = join(dir, 'flat.qcow2');
    const compressed = join(dir, 'compressed.qcow2');
    const top = join(dir, 'top.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', raw, flat]);
    run('qemu-img', ['convert', '-c', '-O', 'qcow2', raw, compressed]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'flat.qcow2', '-F', 'qcow2', top]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 9 5000000 300000', '-c', 'write -z 1048576 1048576', top]);
    for (const source of [raw, flat, compressed, top]) {
      const optionSets: Array<Record<string, string>> = [
        {},
        { cluster_size: '4096' },
        { preallocation: 'metadata' },
        { preallocation: 'falloc' },
        { backing_file: 'x.qcow2' },
      ];
      for (const options of optionSets) {
        expect([source, options, await vdiskMeasure(0, options, source)]).toEqual([
          source,
          options,
          qemuMeasure([source], options),
        ]);
      }
    }
  });
});
