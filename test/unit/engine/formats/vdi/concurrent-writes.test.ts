// Concurrent writes (as the NBD server issues them) into one unallocated block of vdi, vpc and vmdk
// images all land: allocation is serialized, so no write's block is replaced by another's.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

describe('concurrent allocating writes', () => {
  for (const [format, options] of [
    ['vdi', {}],
    ['vpc', { force_size: 'on' }],
    ['vmdk', {}],
    ['vmdk', { subformat: 'streamOptimized' }],
  ] as const) {
    it(`keeps every write to one fresh block of ${format} ${JSON.stringify(options)}`, async () => {
      const path = join(dir, `concurrent-${format}-${Object.keys(options).length}.img`);
      await createWithDriver(format, path, 4 * 1024 * 1024, options);
      const device = await openImage(path, { format });
      const unitBytes = format === 'vmdk' ? 65536 : 4096;
      const pieces = Array.from({ length: 8 }, (_, i) => ({
        offsetBytes: i * unitBytes,
        data: seededBytes(unitBytes, i + 1),
      }));
      try {
        if (options && 'subformat' in options) {
          // Stream-optimized grains are written once, whole: one concurrent writeCompressed per grain.
          await Promise.all(pieces.map((piece) => device.writeCompressed!(piece.offsetBytes, piece.data)));
        } else {
          await Promise.all(pieces.map((piece) => device.write(piece.offsetBytes, piece.data)));
        }
      } finally {
        await device.close();
      }
      const reopened = await openImage(path, { format, readOnly: true });
      try {
        for (const piece of pieces) {
          const actual = new Uint8Array(piece.data.length);
          await reopened.read(piece.offsetBytes, actual);
          expect(Buffer.from(actual).equals(Buffer.from(piece.data))).toBe(true);
        }
      } finally {
        await reopened.close();
      }
    });
  }
});
