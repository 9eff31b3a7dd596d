// Property test: mutated VMDK sparse headers, embedded descriptors, grain directories and grain tables
// (plain and stream-optimized) open and read, or fail with a VdiskError code; never a crash, hang or
// allocation sized by a corrupt field. Images are made by vdisk's own create.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { exerciseTruncations, fuzzHeaders } from '../../../../helpers/header-fuzz.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

describe('vmdk header mutations', () => {
  for (const subformat of ['monolithicSparse', 'streamOptimized']) {
    it(`${subformat}: header, descriptor, GD and GTs`, async () => {
      const path = join(dir, `pristine-${subformat}.vmdk`);
      await createWithDriver('vmdk', path, 3 * 1024 * 1024, { subformat });
      const device = await openImage(path, { format: 'vmdk' });
      await device.write(0, seededBytes(64 * 1024, 1));
      await device.write(2 * 1024 * 1024, seededBytes(64 * 1024, 2));
      await device.close();
      // Header (512), descriptor (sectors 1-20), redundant GD + GT, GD + GT: the first 31 sectors.
      await fuzzHeaders({ pristinePath: path, format: 'vmdk', dir, metadataBytes: 31 * 512 });
      const codes = await exerciseTruncations(path, 'vmdk', dir, [
        0,
        100,
        511,
        2048,
        11 * 1024,
        31 * 512,
        64 * 1024,
        -100,
      ]);
      expect(codes.slice(0, 7).every((code) => code === 'VDISK_EFORMAT' || code === 'VDISK_ECORRUPT')).toBe(
        true,
      );
    });
  }
});
