// bochs read by vdisk vs qemu-img 7.2: the bximage sample gives its documented hash and size, and
// images built from the published layout (sparse extents, partial bitmaps) read byte-exact as qemu reads them.

import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  qemuRawSha256,
  SAMPLES_DIR,
  scratchDir,
  seededBytes,
  sha256Device,
  haveTools,
  expectImageContent,
} from '../helpers/format-harness.ts';
import { writeBochs } from '../unit/engine/formats/bochs/build-bochs.ts';

const hasQemuImg = haveTools(['qemu-img'], 'bochs comparisons with qemu-img');

describe('bochs sample', () => {
  it('reads bximage empty.bochs with the documented size and hash', async () => {
    await expectImageContent(
      join(SAMPLES_DIR, 'bochs/empty.bochs'),
      {
        format: 'bochs',
        sizeBytes: 1032192,
        sha256: '85e614bc2ef17bec493b849dbeea34687ba52d7b1fedc4e5fc3729b0fb059aad',
      },
      { more: async (device) => expect((await device.info()).virtualSizeBytes).toBe(1032192) },
    );
  });
});

describe.skipIf(!hasQemuImg)('bochs built from the layout, read like qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('reads scattered sectors byte-exact', async () => {
    const path = join(dir, 'built.bochs');
    const sectors = new Map<number, Uint8Array>();
    for (const sector of [0, 1, 7, 8, 63, 64, 200, 511, 1000, 4095])
      sectors.set(sector, seededBytes(512, sector + 1));
    await writeBochs(path, { diskBytes: 2 << 20, extentBytes: 32 * 1024, sectors });
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.sizeBytes).toBe(2 << 20);
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
      const sector7 = new Uint8Array(512);
      await device.read(7 * 512, sector7);
      expect(Buffer.from(sector7).equals(Buffer.from(seededBytes(512, 8)))).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('reads a version-1 header (disk size without the timestamp field) as qemu does', async () => {
    const path = join(dir, 'v1.bochs');
    const sectors = new Map<number, Uint8Array>([
      [5, seededBytes(512, 5)],
      [300, seededBytes(512, 6)],
    ]);
    await writeBochs(path, { diskBytes: 1 << 20, extentBytes: 8192, sectors, version: 1 });
    const device = await openImage(path, { readOnly: true });
    try {
      expect(device.sizeBytes).toBe(1 << 20);
      expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
    } finally {
      await device.close();
    }
  });
});
