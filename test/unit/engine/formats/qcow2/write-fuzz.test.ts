// Property test of the qcow2 write paths on damaged metadata: mutate a small image (512-byte clusters, a
// compressed cluster, an internal snapshot), open it writable and write, zero, discard, compress, snapshot
// and resize. Every case ends in success or a VdiskError: never a crash, a hang or an unbounded allocation.

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
});
