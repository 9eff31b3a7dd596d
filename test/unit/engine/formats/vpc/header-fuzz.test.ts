// Property test: mutated VHD footers, dynamic headers and BATs open and read, or fail with a VdiskError
// code; never a crash, hang or allocation sized by a corrupt field. Images are made by vdisk's own create.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { exerciseTruncations, fuzzHeaders } from '../../../../helpers/header-fuzz.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

describe('vpc header mutations', () => {
  it('dynamic: footer copy, dynamic header and BAT', async () => {
    const path = join(dir, 'pristine.vhd');
    await createWithDriver('vpc', path, 6 * 1024 * 1024);
    const device = await openImage(path, { format: 'vpc' });
    await device.write(2 * 1024 * 1024 + 512, seededBytes(4096, 1));
    await device.close();
    await fuzzHeaders({ pristinePath: path, format: 'vpc', dir, metadataBytes: 2048 });
    // Cut inside the footer copy, the dynamic header, the BAT and the data block: every cut is refused.
    const codes = await exerciseTruncations(path, 'vpc', dir, [
      0,
      100,
      511,
      1000,
      1600,
      4096,
      -600,
      -(1 << 20),
    ]);
    expect(codes.every((code) => code === 'VDISK_EFORMAT' || code === 'VDISK_ECORRUPT')).toBe(true);
  });

  it('fixed: the footer at the end (mutations land in the last sector)', async () => {
    const path = join(dir, 'pristine-fixed.vhd');
    await createWithDriver('vpc', path, 1024 * 1024, { subformat: 'fixed' });
    await fuzzHeaders({
      pristinePath: path,
      format: 'vpc',
      dir,
      metadataBytes: 512,
      metadataStartBytes: -512,
      numRuns: 40,
    });
  });
});
