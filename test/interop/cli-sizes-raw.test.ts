// Human sizes against qemu-img: `vdisk info` on sparse raw files of many sizes (unit boundaries,
// 0.977 KiB-style fractions, odd sizes qemu pads to whole sectors, terabytes; ext4 stops at 16 TiB)
// prints the same lines as `qemu-img info`.

import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img');
warnMissing('qemu-img', 'cli-sizes-raw.test.ts');

const SIZES = [
  0,
  1,
  511,
  512,
  513,
  999,
  1000,
  1023,
  1024,
  1025,
  10239,
  1000 * 1024,
  1023 * 1024,
  1024 * 1024 - 1,
  1536 * 1024,
  999_999_999,
  4 * 1024 ** 3,
  1024 ** 4 + 1,
  15 * 1024 ** 4 + 4096,
];

describe.skipIf(!HAS_QEMU)('human sizes beside qemu-img info', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-sizes'));
  });
  afterAll(async () => cleanup?.());

  it('prints virtual size and disk size as qemu-img does', async () => {
    for (const sizeBytes of SIZES) {
      const path = join(dir, `size-${sizeBytes}.raw`);
      await writeFile(path, '');
      await truncate(path, sizeBytes);
      const qemu = tool('qemu-img', ['info', '-f', 'raw', path]);
      const ours = await vdisk(['info', '-f', 'raw', path]);
      expect({ sizeBytes, stdout: ours.stdout, code: ours.code }).toEqual({
        sizeBytes,
        stdout: qemu.stdout,
        code: qemu.code,
      });
    }
  });
});
