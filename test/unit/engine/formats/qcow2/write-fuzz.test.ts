// Property tests of the qcow2 write paths on damaged metadata: mutate images (512-byte clusters; 64 KiB
// clusters with word-sized values aimed at each metadata cluster), open them writable and write, zero,
// discard, compress, snapshot and resize. Every case ends in success or a VdiskError: never a crash, a hang or an unbounded allocation.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir } from '../../../../helpers/format-harness.ts';

describe('qcow2 writes to damaged images', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let pristine: Buffer;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'small.qcow2');
    await createWithDriver('qcow2', path, 1 << 20, { cluster_size: '512' });
    const device = await openImage(path);
    await device.write(3000, new Uint8Array(40_000).fill(0x33));
    await device.writeCompressed?.(65536, new Uint8Array(512).fill(1));
    await device.snapshots?.create('s');
    await device.close();
    pristine = await readFile(path);
  });
  afterAll(async () => cleanup());

  it('property: every write operation on mutated metadata succeeds or fails with a VdiskError', async () => {
    let counter = 0;
    const mutation = fc.record({ at: fc.nat(20_000), byte: fc.integer({ min: 0, max: 255 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 6 }), async (mutations) => {
        const bytes = Buffer.from(pristine);
        for (const { at, byte } of mutations) if (at < bytes.length) bytes[at] = byte;
        const path = join(dir, `mutant-${counter++ % 3}.qcow2`);
        await writeFile(path, bytes);
        try {
          const device = await openImage(path);
          try {
            await device.write(1000, new Uint8Array(5000).fill(7));
            await device.writeZeroes(30_000, 4096, { mayUnmap: true });
            await device.discard(0, 2048);
            await device.writeCompressed?.(131_072, new Uint8Array(512).fill(2));
            await device.snapshots?.create('t');
            await device.snapshots?.delete('s');
            await device.resize?.(2 << 20, { shrink: false });
          } finally {
            await device.close();
          }
        } catch (err) {
          if (!isVdiskError(err)) throw err;
        }
      }),
      { numRuns: 200, seed: 7, interruptAfterTimeLimit: 30_000 },
    );
  });

  it('property: 32-bit values written into the header, refcount table, refcount block, L1 and L2 tables', async () => {
    const path = join(dir, 'big.qcow2');
    await createWithDriver('qcow2', path, 64 << 20, {});
    const device = await openImage(path);
    await device.write(3000, new Uint8Array(400_000).fill(0x33));
    await device.writeCompressed?.(1 << 20, new Uint8Array(65536).fill(1));
    await device.snapshots?.create('s');
    await device.write(5000, new Uint8Array(4000).fill(0x34));
    await device.close();
    const original = await readFile(path);
    // Cluster 0 header, 1 refcount table, 2 refcount block, 3 L1, 4 L2, then data and later tables.
    const regions = [0, 65536, 131072, 196608, 262144, 327680];
    const words = [
      0, 1, 0xffffffff, 0x80000000, 0x7fffffff, 0x00010000, 0x00ff0000, 0x40000000, 0x200, 0x12345,
    ];
    const mutation = fc.record({
      region: fc.constantFrom(...regions),
      at: fc.nat(600),
      word: fc.constantFrom(...words),
    });
    let counter = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 4 }), async (mutations) => {
        const bytes = Buffer.from(original);
        for (const { region, at, word } of mutations) bytes.writeUInt32BE(word >>> 0, region + (at & ~3));
        const mutant = join(dir, `word-${counter++ % 3}.qcow2`);
        await writeFile(mutant, bytes);
        for (const readOnly of [true, false]) {
          try {
            const opened = await openImage(mutant, { readOnly });
            try {
              await opened.read(0, new Uint8Array(Math.min(opened.sizeBytes, 2 << 20)));
              await opened.blockStatus(0, opened.sizeBytes);
              await opened.info();
              if (!readOnly) {
                await opened.write(1000, new Uint8Array(70_000).fill(7));
                await opened.writeZeroes(300_000, 65536, { mayUnmap: true });
                await opened.discard(0, 65536);
                await opened.writeCompressed?.(2 << 20, new Uint8Array(65536).fill(2));
                await opened.snapshots?.create('t');
                await opened.snapshots?.apply('s');
                await opened.snapshots?.delete('s');
              }
            } finally {
              await opened.close();
            }
          } catch (err) {
            if (!isVdiskError(err)) throw err;
          }
        }
      }),
      { numRuns: 150, seed: 3, interruptAfterTimeLimit: 30_000 },
    );
  });
});
