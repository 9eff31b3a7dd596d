// writeCompressed stores the clusters of one turn together (TurnBatch, WriteCoalescer): compressible
// and incompressible clusters mixed, out of order, a guest cluster written twice in the same turn
// (the later write wins, whichever compression finishes first: this failed 1 run in 5 before), over
// clusters already mapped. The guest reads back as written, qemu-img check finds nothing (not even
// leaks), and qemu-img reads the same bytes.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, has, run, runStatus, scratchDir } from '../../../../helpers/format-harness.ts';

const CLUSTER = 65536;
const HAS_QEMU = has('qemu-img');
if (!HAS_QEMU)
  console.warn('SKIPPED qcow2 compressed-batch.test.ts: qemu-img not found (apt-get install qemu-utils)');

/**
 * Compresses to about 40 KiB: each payload takes a host cluster of its own, so a payload leaked or
 * released twice changes a host cluster's refcount, which qemu-img check sees.
 */
function patterned(seed: number): Buffer {
  const cluster = Buffer.alloc(CLUSTER);
  let state = seed * 2654435761 + 1;
  for (let offset = 0; offset < 40 * 1024; offset += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    cluster.writeUInt32LE(state >>> 0, offset);
  }
  return cluster;
}

describe.skipIf(!HAS_QEMU)('qcow2 compressed writes of one turn', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('cbatch'));
  });
  afterAll(async () => cleanup());

  for (const compression of ['zlib', 'zstd']) {
    it(`stores mixed, repeated and overwritten clusters correctly (${compression})`, async () => {
      const path = join(dir, `${compression}.qcow2`);
      await createWithDriver('qcow2', path, 32 * CLUSTER, { compression_type: compression });
      const expected = Buffer.alloc(32 * CLUSTER);
      const device = await openImage(path, {});
      try {
        // First turn: every cluster, so the second turn overwrites mapped clusters.
        await Promise.all(
          Array.from({ length: 32 }, (_, index) => {
            const data = index % 4 === 3 ? randomBytes(CLUSTER) : patterned(index);
            data.copy(expected, index * CLUSTER);
            return device.writeCompressed?.(index * CLUSTER, data);
          }),
        );
        // Second turn: out of order, mixed, cluster 5 twice (the later call wins).
        const order = [9, 5, 2, 20, 5, 3, 31, 0, 1];
        await Promise.all(
          order.map((index, position) => {
            const data = position % 3 === 2 ? randomBytes(CLUSTER) : patterned(1000 + position);
            data.copy(expected, index * CLUSTER);
            return device.writeCompressed?.(index * CLUSTER, data);
          }),
        );
        const readBack = Buffer.alloc(expected.length);
        await device.read(0, readBack);
        expect(readBack.equals(expected)).toBe(true);
      } finally {
        await device.close();
      }
      const check = runStatus('qemu-img', ['check', path]);
      expect({ status: check.status, out: check.stdout + check.stderr }).toMatchObject({ status: 0 });
      const raw = join(dir, `${compression}.raw`);
      run('qemu-img', ['convert', '-O', 'raw', path, raw]);
      expect((await readFile(raw)).equals(expected)).toBe(true);
    });
  }
});
