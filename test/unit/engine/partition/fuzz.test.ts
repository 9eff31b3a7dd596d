// Hostile tables: random corruption of valid MBR (with an EBR chain) and GPT disks must give a table,
// no table, or a VdiskError (CorruptImageError) - never another exception, a hang or a huge buffer.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../src/engine/errors.ts';
import { applyLayout, readPartitionTable } from '../../../../src/engine/partition/index.ts';
import { bufferIo } from '../../../../src/engine/partition/types.ts';

const MiB = 1024 * 1024;
const DISK_BYTES = 12 * MiB;

async function template(table: 'mbr' | 'gpt'): Promise<Buffer> {
  const disk = Buffer.alloc(DISK_BYTES);
  const partitions = Array.from({ length: 6 }, () => ({ sizeBytes: MiB }));
  await applyLayout(bufferIo(disk), { table, partitions: [...partitions, {}] });
  return disk;
}

/** Byte offsets the tables live at: sector 0, GPT headers and arrays, the EBRs. */
const HOT_SECTORS = [
  0,
  1,
  2,
  3,
  33,
  2048 * 4,
  2048 * 6,
  2048 * 8,
  DISK_BYTES / 512 - 1,
  DISK_BYTES / 512 - 33,
];

describe('partition table reading on corrupted disks', () => {
  for (const table of ['mbr', 'gpt'] as const) {
    it(`never throws anything but a VdiskError on a corrupted ${table} disk`, async () => {
      const original = await template(table);
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.tuple(
              fc.constantFrom(...HOT_SECTORS),
              fc.integer({ min: 0, max: 511 }),
              fc.integer({ min: 0, max: 255 }),
            ),
            { minLength: 1, maxLength: 24 },
          ),
          async (edits) => {
            // Edit in place and undo afterwards: copying 12 MiB per run would dominate the test's time.
            const saved = edits.map(([sector, offset]) => original[sector * 512 + offset] ?? 0);
            for (const [sector, offset, value] of edits) original[sector * 512 + offset] = value;
            try {
              const result = await readPartitionTable(bufferIo(original), 'fuzz.img');
              if (result) expect(result.partitions.length).toBeLessThanOrEqual(32768);
            } catch (err) {
              expect(isVdiskError(err), String(err)).toBe(true);
            } finally {
              for (let index = edits.length - 1; index >= 0; index--) {
                const [sector, offset] = edits[index] ?? [0, 0];
                original[sector * 512 + offset] = saved[index] ?? 0;
              }
            }
          },
        ),
        { numRuns: 300 },
      );
    });
  }
});
