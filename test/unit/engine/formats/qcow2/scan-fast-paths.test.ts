// The qcow2 scans that read standard L2 entries from their words instead of decoding them (block status
// extending the last extent, mapRead extending the last piece) against the full decode: on random
// images (data, zero clusters with and without a host cluster, discards, compressed clusters, over a
// shorter backing file or not), a long call must answer exactly what cluster-by-cluster calls, merged, answer.

import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice, Extent } from '../../../../../src/engine/block-device.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir } from '../../../../helpers/format-harness.ts';

const CLUSTER_BYTES = 512;
const SIZE_BYTES = 96 * CLUSTER_BYTES;

const operation = fc.record({
  kind: fc.constantFrom('write', 'zero', 'zero-unmap', 'discard', 'compress'),
  cluster: fc.nat(SIZE_BYTES / CLUSTER_BYTES - 1),
  clusterCount: fc.integer({ min: 1, max: 12 }),
  fill: fc.integer({ min: 1, max: 255 }),
});

type Operation = typeof operation extends fc.Arbitrary<infer T> ? T : never;

async function apply(device: BlockDevice, steps: Operation[]): Promise<void> {
  for (const step of steps) {
    const offsetBytes = step.cluster * CLUSTER_BYTES;
    const lengthBytes = Math.min(step.clusterCount * CLUSTER_BYTES, SIZE_BYTES - offsetBytes);
    if (step.kind === 'write') await device.write(offsetBytes, new Uint8Array(lengthBytes).fill(step.fill));
    else if (step.kind === 'zero') await device.writeZeroes(offsetBytes, lengthBytes);
    else if (step.kind === 'zero-unmap')
      await device.writeZeroes(offsetBytes, lengthBytes, { mayUnmap: true });
    else if (step.kind === 'discard') await device.discard(offsetBytes, lengthBytes);
    else await device.writeCompressed?.(offsetBytes, new Uint8Array(CLUSTER_BYTES).fill(step.fill));
  }
}

/** Extents of one cluster at a time (each call's first cluster is always decoded in full), merged as blockStatus merges. */
async function extentsClusterByCluster(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
): Promise<Extent[]> {
  const merged: Extent[] = [];
  const end = offsetBytes + lengthBytes;
  for (let at = offsetBytes; at < end; ) {
    const stop = Math.min(end, (Math.floor(at / CLUSTER_BYTES) + 1) * CLUSTER_BYTES);
    for (const extent of await device.blockStatus(at, stop - at)) {
      const previous = merged.at(-1);
      const hostFollows =
        previous?.hostOffsetBytes === undefined
          ? extent.hostOffsetBytes === undefined
          : extent.hostOffsetBytes === previous.hostOffsetBytes + previous.lengthBytes;
      if (
        previous &&
        previous.allocated === extent.allocated &&
        previous.zero === extent.zero &&
        previous.data === extent.data &&
        previous.compressed === extent.compressed &&
        hostFollows
      )
        previous.lengthBytes += extent.lengthBytes;
      else merged.push({ ...extent });
    }
    at = stop;
  }
  return merged;
}

describe('qcow2 scans over standard L2 entries', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let counter = 0;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('qcow2-scan'));
    const base = join(dir, 'base.qcow2');
    // Half the overlay's size: unallocated clusters past its end read as zeros, the others do not.
    await createWithDriver('qcow2', base, SIZE_BYTES / 2, { cluster_size: String(CLUSTER_BYTES) });
    const device = await openImage(base);
    await device.write(10 * CLUSTER_BYTES, new Uint8Array(30 * CLUSTER_BYTES).fill(0x5a));
    await device.close();
  });
  afterAll(async () => cleanup());

  it('property: block status and reads over many clusters equal cluster-by-cluster answers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(operation, { minLength: 1, maxLength: 14 }),
        fc.array(fc.tuple(fc.nat(SIZE_BYTES - 1), fc.integer({ min: 1, max: SIZE_BYTES })), {
          minLength: 1,
          maxLength: 4,
        }),
        async (overBacking, steps, ranges) => {
          const path = join(dir, `image-${counter++}.qcow2`);
          await createWithDriver(
            'qcow2',
            path,
            SIZE_BYTES,
            { cluster_size: String(CLUSTER_BYTES) },
            overBacking ? { file: 'base.qcow2', format: 'qcow2' } : undefined,
          );
          const device = await openImage(path);
          try {
            await apply(device, steps);
            for (const [offsetBytes, wanted] of [[0, SIZE_BYTES], ...ranges] as const) {
              const lengthBytes = Math.min(wanted, SIZE_BYTES - offsetBytes);
              const whole = await device.blockStatus(offsetBytes, lengthBytes);
              expect(whole).toStrictEqual(await extentsClusterByCluster(device, offsetBytes, lengthBytes));
              const bytes = new Uint8Array(lengthBytes);
              await device.read(offsetBytes, bytes);
              const expected = new Uint8Array(lengthBytes);
              for (let at = 0; at < lengthBytes; ) {
                const stop = Math.min(
                  lengthBytes,
                  (Math.floor((offsetBytes + at) / CLUSTER_BYTES) + 1) * CLUSTER_BYTES - offsetBytes,
                );
                await device.read(offsetBytes + at, expected.subarray(at, stop));
                at = stop;
              }
              expect(Buffer.from(bytes).equals(Buffer.from(expected))).toBe(true);
            }
          } finally {
            await device.close();
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
