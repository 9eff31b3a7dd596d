// NodeHostFile.readCached and raw's readCached (the NBD server's synchronous fast path, issue 5): it
// copies what the page cache holds, stops short at EOF, never waits for the disk (a range evicted
// from the cache reads as nothing), reads nothing once the file is closed, and raw's guarded device
// checks its range like read().

import { createRequire } from 'node:module';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeHostFile } from '../../../../src/engine/io/host-file.ts';
import { nativeFileOps } from '../../../../src/engine/io/native.ts';
import { openImage } from '../../../../src/engine/open.ts';

const KiB = 1024;
const native = nativeFileOps();
let folder: string;

/** posix_fadvise(POSIX_FADV_DONTNEED): drops the file's clean pages from the page cache. */
function evict(fd: number): boolean {
  const require = createRequire(import.meta.url);
  const koffi = require('koffi') as typeof import('koffi');
  const fadvise = koffi.load('libc.so.6').func('int posix_fadvise(int, int64_t, int64_t, int)') as (
    ...args: number[]
  ) => number;
  return fadvise(fd, 0, 0, 4) === 0;
}

function pattern(lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let at = 0; at < lengthBytes; at++) bytes[at] = (at * 13 + 5) % 251;
  return bytes;
}

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-read-cached-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

describe.skipIf(!native)('NodeHostFile.readCached', () => {
  it('copies cached bytes at once and stops at EOF', async () => {
    const path = join(folder, 'warm.bin');
    const content = pattern(300 * KiB);
    await writeFile(path, content);
    const file = await NodeHostFile.open(path, { readOnly: true });
    try {
      const buffer = Buffer.alloc(256 * KiB);
      expect(file.readCached!(4 * KiB, buffer)).toBe(buffer.length);
      expect(buffer.equals(content.subarray(4 * KiB, 260 * KiB))).toBe(true);
      // 44 KiB before EOF: a short count, the rest is the caller's (raw pads it with zeros).
      expect(file.readCached!(256 * KiB, buffer)).toBe(44 * KiB);
      expect(file.readCached!(400 * KiB, buffer)).toBe(0);
    } finally {
      await file.close();
    }
    expect(file.readCached!(0, Buffer.alloc(512))).toBe(0);
  });

  it('reads nothing from a range that is not in the page cache instead of waiting for the disk', async () => {
    const path = join(folder, 'cold.bin');
    const content = pattern(1024 * KiB);
    const writer = await NodeHostFile.open(path, { readOnly: false, create: true, truncate: true });
    await writer.write(0, content);
    await writer.sync();
    await writer.close();
    const file = await NodeHostFile.open(path, { readOnly: true });
    try {
      expect(evict(file.handle.fd)).toBe(true);
      const buffer = Buffer.alloc(256 * KiB);
      expect(file.readCached!(512 * KiB, buffer)).toBeLessThan(buffer.length);
      // The ordinary read still gets every byte.
      expect(await file.read(512 * KiB, buffer)).toBe(buffer.length);
      expect(buffer.equals(content.subarray(512 * KiB, 768 * KiB))).toBe(true);
      // ... and now the range is cached.
      const again = Buffer.alloc(256 * KiB);
      expect(file.readCached!(512 * KiB, again)).toBe(again.length);
      expect(again.equals(buffer)).toBe(true);
    } finally {
      await file.close();
    }
  });

  it("is raw's fast path, with the guarded device's range check", async () => {
    const path = join(folder, 'disk.raw');
    const content = pattern(1024 * KiB);
    await writeFile(path, content);
    const device = await openImage(path, { format: 'raw', readOnly: true });
    try {
      const buffer = Buffer.alloc(64 * KiB);
      expect(device.readCached!(128 * KiB, buffer)).toBe(buffer.length);
      expect(buffer.equals(content.subarray(128 * KiB, 192 * KiB))).toBe(true);
      expect(() => device.readCached!(1000 * KiB, buffer)).toThrow(
        expect.objectContaining({ code: 'VDISK_EINVAL' }),
      );
    } finally {
      await device.close();
    }
  });
});
