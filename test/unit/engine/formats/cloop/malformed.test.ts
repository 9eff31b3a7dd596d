// Malformed cloop images give clear errors with offsets: non-monotonic index, offsets past EOF, absurd
// block sizes and counts, a block that inflates beyond its size (a bomb bounded by the block size),
// and fast-check mutations of the header and index.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';
import { buildCloop } from './build-cloop.ts';

function valid(): Uint8Array {
  const content = new Uint8Array(4 * 4096);
  content.set(seededBytes(5000, 1), 100);
  return buildCloop(content, 4096);
}

describe('cloop malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  async function readAll(bytes: Uint8Array): Promise<unknown> {
    const path = join(dir, 'bad.cloop');
    await writeFile(path, bytes);
    try {
      const device = await openImage(path, { readOnly: true, format: 'cloop' });
      try {
        await device.read(0, new Uint8Array(Math.min(device.sizeBytes, 1 << 20)));
      } finally {
        await device.close();
      }
      return undefined;
    } catch (err) {
      return err;
    }
  }

  it('refuses a non-monotonic index', async () => {
    const bytes = valid();
    const view = new DataView(bytes.buffer);
    view.setBigUint64(136 + 2 * 8, view.getBigUint64(136 + 8, false) - 1n, false);
    expect(await readAll(bytes)).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 136 + 16 });
  });

  it('refuses an offset past the end of the file', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setBigUint64(136 + 4 * 8, 1n << 30n, false);
    expect(await readAll(bytes)).toMatchObject({ code: 'VDISK_ECORRUPT' });
  });

  it('refuses block sizes that are not sector multiples or over 64 MiB', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setUint32(128, 1000, false);
    expect(await readAll(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 128 });
    new DataView(bytes.buffer).setUint32(128, 128 << 20, false);
    expect(await readAll(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 128 });
  });

  it('refuses a block count whose index is past EOF without allocating it', async () => {
    const bytes = valid();
    new DataView(bytes.buffer).setUint32(132, 0xfffffff0, false);
    expect(await readAll(bytes)).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 132 });
  });

  it('bounds a decompression bomb by the block size', async () => {
    const bomb = deflateSync(new Uint8Array(64 << 20));
    const image = buildCloop(new Uint8Array(4096), 4096);
    const out = new Uint8Array(152 + bomb.length);
    out.set(image.subarray(0, 152));
    out.set(bomb, 152);
    new DataView(out.buffer).setBigUint64(144, BigInt(152 + bomb.length), false);
    expect(await readAll(out)).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 152 });
  });

  it('never throws anything but a VdiskError on mutated headers', async () => {
    const base = valid();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 128, max: 175 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        async (edits) => {
          const bytes = Uint8Array.from(base);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await readAll(bytes);
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 60 },
    );
  });
});
