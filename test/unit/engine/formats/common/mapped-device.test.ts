// The base class's run handling on the appending formats (vdi, vhdx): a write covering several new
// blocks reaches the file with one call, reads and block status join blocks that sit back to back in
// the file, and never join blocks that don't (written out of guest order). qemu-img compares each
// result with the expected guest bytes, and checks it.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostFile } from '../../../../../src/engine/io/host-file.ts';
import { NodeHostFile } from '../../../../../src/engine/io/host-file.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { CuttingFile } from '../../../../helpers/cutting-file.ts';
import { haveTools, runStatus, scratchDir, seededBytes } from '../../../../helpers/format-harness.ts';

const HAS_QEMU = haveTools(['qemu-img'], 'mapped-device.test.ts');
const MiB = 1024 * 1024;
const BLOCK_BYTES = MiB;
const SIZE_BYTES = 8 * MiB;

/** Counts the calls that reach a file (a CuttingFile that never cuts). */
class CountingFile extends CuttingFile {
  reads: { offsetBytes: number; lengthBytes: number }[] = [];
  writes: { offsetBytes: number; lengthBytes: number }[] = [];
  constructor(inner: HostFile) {
    super(inner, Number.POSITIVE_INFINITY);
  }
  override read(offsetBytes: number, buffer: Uint8Array): Promise<number> {
    this.reads.push({ offsetBytes, lengthBytes: buffer.length });
    return super.read(offsetBytes, buffer);
  }
  override write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.writes.push({ offsetBytes, lengthBytes: data.length });
    return super.write(offsetBytes, data);
  }
}

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir('mapped-runs')));
afterAll(async () => cleanup());

describe.skipIf(!HAS_QEMU)('block runs of appending formats', () => {
  for (const [format, createOptions] of [
    ['vdi', []],
    ['vhdx', ['-o', 'block_size=1M']],
  ] as const) {
    it(`${format}: writes new blocks at once and reads only host-contiguous runs at once`, async () => {
      const path = join(dir, `runs.${format}`);
      expect(
        runStatus('qemu-img', ['create', '-q', '-f', format, ...createOptions, path, String(SIZE_BYTES)])
          .status,
      ).toBe(0);
      const expected = new Uint8Array(SIZE_BYTES);
      let counting: CountingFile | undefined;
      const openFile = async (filePath: string, readOnly: boolean): Promise<HostFile> => {
        counting = new CountingFile(await NodeHostFile.open(filePath, { readOnly }));
        return counting;
      };
      const device = await openImage(path, { format, openFile });
      // Host order: block 3, then 0-2 (one write), then 6-7, then 5: guest runs 0-2 and 6-7 are
      // back to back in the file, 2|3, 3|(4 unallocated) and 5|6 are not.
      const writes: [number, number][] = [
        [3, 1],
        [0, 3],
        [6, 2],
        [5, 1],
      ];
      for (const [firstBlock, blockCount] of writes) {
        const data = seededBytes(blockCount * BLOCK_BYTES, firstBlock + 1);
        const before = counting!.writes.length;
        await device.write(firstBlock * BLOCK_BYTES, data);
        const dataWrites = counting!.writes.slice(before).filter((write) => write.lengthBytes >= BLOCK_BYTES);
        expect(dataWrites.map((write) => write.lengthBytes)).toEqual([blockCount * BLOCK_BYTES]);
        expected.set(data, firstBlock * BLOCK_BYTES);
      }
      await device.close();

      const reader = await openImage(path, { format, readOnly: true, openFile });
      try {
        const extents = await reader.blockStatus(0, SIZE_BYTES);
        expect(
          extents.map((extent) => [extent.offsetBytes / MiB, extent.lengthBytes / MiB, extent.data]),
        ).toEqual([
          [0, 3, true],
          [3, 1, true],
          [4, 1, false],
          [5, 1, true],
          [6, 2, true],
        ]);
        counting!.reads = [];
        const actual = new Uint8Array(SIZE_BYTES);
        await reader.read(0, actual);
        expect(Buffer.from(actual).equals(Buffer.from(expected))).toBe(true);
        // One pread per host-contiguous run: 0-2, 3, 5, 6-7 (block 4 reads as zeros without I/O).
        expect(counting!.reads.map((read) => read.lengthBytes / MiB)).toEqual([3, 1, 1, 2]);
      } finally {
        await reader.close();
      }
      const rawPath = join(dir, `runs-${format}.raw`);
      await writeFile(rawPath, expected);
      expect(runStatus('qemu-img', ['compare', '-f', format, '-F', 'raw', path, rawPath]).status).toBe(0);
      expect(runStatus('qemu-img', ['check', '-f', format, path]).status).toBe(0);
    });
  }
});
