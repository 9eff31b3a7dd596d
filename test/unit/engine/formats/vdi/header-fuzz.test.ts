// Property test: mutated VDI headers and block maps open and read, or fail with a VdiskError code;
// never a crash, hang or allocation sized by a corrupt field. Images are made by vdisk's own create.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { exerciseTruncations, fuzzHeaders } from '../../../../helpers/header-fuzz.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

describe('vdi header mutations', () => {
  it('header and block map', async () => {
    const path = join(dir, 'pristine.vdi');
    await createWithDriver('vdi', path, 5 * 1024 * 1024);
    const device = await openImage(path, { format: 'vdi' });
    await device.write(1024 * 1024 + 512, seededBytes(4096, 1));
    await device.write(4 * 1024 * 1024, seededBytes(4096, 2));
    await device.close();
    await fuzzHeaders({ pristinePath: path, format: 'vdi', dir, metadataBytes: 1024 });
    // Inside the header or block map: refused. Inside the data area: blocks past EOF are corrupt.
    const codes = await exerciseTruncations(path, 'vdi', dir, [0, 100, 511, 600, 1024, 1024 + 4096, -600]);
    expect(codes.slice(0, 5).every((code) => code === 'VDISK_EFORMAT' || code === 'VDISK_ECORRUPT')).toBe(
      true,
    );
    expect(codes[5]).toBe('VDISK_ECORRUPT');
  });
});
