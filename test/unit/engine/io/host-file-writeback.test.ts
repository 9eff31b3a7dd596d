// NodeHostFile's early writeback (writebackEveryBytes, used for convert's target): a hint that
// starts writing dirty pages back while a stream of writes goes on. It must never change what
// the file holds, must not be left running on a closed descriptor, and must start only writeback.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeHostFile } from '../../../../src/engine/io/host-file.ts';
import { nativeFileOps } from '../../../../src/engine/io/native.ts';

const KiB = 1024;
let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-writeback-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

describe('NodeHostFile writebackEveryBytes', () => {
  it('keeps every byte written, through many writeback starts, and closes cleanly', async () => {
    const path = join(folder, 'stream.bin');
    const file = await NodeHostFile.open(path, {
      readOnly: false,
      create: true,
      truncate: true,
      writebackEveryBytes: 64 * KiB,
    });
    const expected = Buffer.alloc(2048 * KiB);
    for (let block = 0; block < 64; block++) {
      const data = Buffer.alloc(32 * KiB, block + 1);
      // Pairs swapped on purpose: the started range spans whatever was written since the last start.
      const at = (block % 2 === 0 ? block + 1 : block - 1) * data.length;
      data.copy(expected, at);
      await file.write(at, data);
    }
    await file.sync();
    // close right after writes: it waits for a writeback start still running on the descriptor.
    await file.write(0, Buffer.alloc(128 * KiB, 0xee));
    expected.fill(0xee, 0, 128 * KiB);
    await file.close();
    expect((await readFile(path)).equals(expected)).toBe(true);
  });

  it('offers the native writeback start where the FFI loads', async () => {
    const native = nativeFileOps();
    if (!native) return;
    const path = join(folder, 'native.bin');
    const file = await NodeHostFile.open(path, { readOnly: false, create: true, truncate: true });
    await file.write(0, Buffer.alloc(256 * KiB, 7));
    expect(await native.startWriteback(file.handle.fd, 0, 0)).toBe(true);
    await file.close();
  });
});
