// Stream-optimized writes of many whole grains: deflated together and appended with one write for the
// records and one per grain table (and redundant table), where grain-by-grain writing made three writes
// per grain. Reads spanning grains (in file order and out of it, from and to the middle of a grain) give
// the written bytes, and qemu-img checks the image and reads the same guest bytes.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostFile } from '../../../../../src/engine/io/host-file.ts';
import { NodeHostFile } from '../../../../../src/engine/io/host-file.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { CuttingFile } from '../../../../helpers/cutting-file.ts';
import { haveTools, runStatus, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';

const HAS_QEMU = haveTools(['qemu-img'], 'stream-write.test.ts');
const MiB = 1024 * 1024;
const GRAIN_BYTES = 64 * 1024;
const SIZE_BYTES = 4 * MiB;

/** Counts the writes that reach the file. */
class CountingFile extends CuttingFile {
  writeSizes: number[] = [];
  constructor(inner: HostFile) {
    super(inner, Number.POSITIVE_INFINITY);
  }
  override write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.writeSizes.push(data.length);
    return super.write(offsetBytes, data);
  }
}

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir('vmdk-stream-write')));
afterAll(async () => cleanup());

describe.skipIf(!HAS_QEMU)('stream-optimized writes', () => {
  it('appends a run of whole grains with one write for their records', async () => {
    const path = join(dir, 'stream.vmdk');
    expect(
      runStatus('qemu-img', [
        'create',
        '-q',
        '-f',
        'vmdk',
        '-o',
        'subformat=streamOptimized',
        path,
        String(SIZE_BYTES),
      ]).status,
    ).toBe(0);
    let counting: CountingFile | undefined;
    const device = await openImage(path, {
      format: 'vmdk',
      openFile: async (filePath, readOnly) => {
        counting = new CountingFile(await NodeHostFile.open(filePath, { readOnly }));
        return counting;
      },
    });
    const expected = new Uint8Array(SIZE_BYTES);
    // Half of the run compresses (a repeated pattern), half does not (seeded noise).
    const run = new Uint8Array(16 * GRAIN_BYTES).fill(0x5a);
    run.set(seededBytes(8 * GRAIN_BYTES, 3), 8 * GRAIN_BYTES);
    const single = seededBytes(1000, 4);
    try {
      const before = counting!.writeSizes.length;
      await device.write(MiB, run);
      const runWrites = counting!.writeSizes.slice(before);
      // The records (at least the 8 incompressible grains' bytes), then the grain table and its copy.
      expect(runWrites.length).toBeLessThanOrEqual(3);
      expect(runWrites[0]).toBeGreaterThan(8 * GRAIN_BYTES);
      expected.set(run, MiB);
      // A partial grain still goes grain by grain (the rest of it read from the parent: zeros here).
      await device.write(3 * MiB + 100, single);
      expected.set(single, 3 * MiB + 100);
      // A grain just before the run, appended after it: guest order is no longer file order there.
      const ahead = seededBytes(GRAIN_BYTES, 5);
      await device.write(MiB - GRAIN_BYTES, ahead);
      expected.set(ahead, MiB - GRAIN_BYTES);
    } finally {
      await device.close();
    }
    // Reads across grains, starting and ending inside grains, in file order and out of it.
    const reader = await openImage(path, { format: 'vmdk', readOnly: true });
    try {
      for (const [offsetBytes, lengthBytes] of [
        [MiB + 1000, 5 * GRAIN_BYTES],
        [MiB - GRAIN_BYTES + 7, 3 * GRAIN_BYTES],
        [0, SIZE_BYTES],
      ] as const) {
        const actual = new Uint8Array(lengthBytes);
        await reader.read(offsetBytes, actual);
        const same = Buffer.from(actual).equals(
          Buffer.from(expected.subarray(offsetBytes, offsetBytes + lengthBytes)),
        );
        expect({ offsetBytes, same }).toEqual({ offsetBytes, same: true });
      }
    } finally {
      await reader.close();
    }
    const rawPath = join(dir, 'expected.raw');
    await writeFile(rawPath, expected);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
    expect(runStatus('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', path, rawPath]).status).toBe(0);
  });
});
