// The generic commands on every other format qemu-img can write (vdi, vpc, qed, ... when their
// drivers are registered): info, map, check and compare (-s too) print what qemu-img prints for the
// same image, which pins qemu's per-format "present" rule (block/io.c supports_backing) and strict
// compare's status words.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import { SAMPLES_DIR } from '../helpers/format-harness.ts';
import { expectSameAsQemuImg, hasTool, mustRun, scratch, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-json-formats.test.ts');
const FORMATS = ['vdi', 'vpc', 'qed', 'qcow2', 'qcow', 'vmdk', 'vhdx', 'parallels'].filter((name) =>
  formatRegistry.some((driver) => driver.name === name),
);
/** Samples no qemu-img can write (bochs, cloop, dmg): read-only formats, qemu's own block-status fallback. */
const SAMPLES = [
  ['bochs', join(SAMPLES_DIR, 'bochs/empty.bochs')],
  ['cloop', join(SAMPLES_DIR, 'cloop/simple-pattern.cloop')],
  ['dmg', join(SAMPLES_DIR, 'dmg/simple-dmg.dmg')],
] as const;

describe.skipIf(!HAS_QEMU)('vdisk on images qemu-img wrote in other formats', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (name: string): string => join(dir, name);

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-formats'));
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', path('src.raw'), '12M']);
    mustRun('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x61 0 3M',
      '-c',
      'write -P 0x62 6M 1M',
      '-c',
      'write -P 0 8M 1M',
      path('src.raw'),
    ]);
  });
  afterAll(async () => cleanup?.());

  for (const format of FORMATS) {
    it(`matches qemu-img for ${format}`, async () => {
      const image = path(`img.${format}`);
      mustRun('qemu-img', ['convert', '-f', 'raw', '-O', format, path('src.raw'), image]);
      for (const args of [
        ['info', '--output=json', image],
        ['info', image],
        ['map', '--output=json', image],
        // vdisk's vhdx check also reports cluster totals, which qemu's vhdx check leaves out.
        ...(format === 'vhdx' ? [] : [['check', image]]),
        ['compare', path('src.raw'), image],
        ['compare', '-s', path('src.raw'), image],
        ['compare', '-s', image, image],
      ]) {
        await expectSameAsQemuImg(args);
      }
    });
  }

  for (const [format, sample] of SAMPLES) {
    const usable = existsSync(sample) && formatRegistry.some((driver) => driver.name === format);
    if (!usable)
      console.warn(
        `SKIPPED cli-json-formats.test.ts ${format}: ${sample} or the ${format} driver is missing`,
      );
    it.skipIf(!usable)(`matches qemu-img for the ${format} sample`, async () => {
      for (const args of [
        ['info', '--output=json', sample],
        ['map', '--output=json', sample],
        ['compare', '-s', sample, sample],
      ]) {
        await expectSameAsQemuImg(args);
      }
    });
  }
});
