// vdisk compare answers as qemu-img compare does (stdout and exit status) on equal, different,
// size-mismatched (zero and non-zero tails) images, in strict mode, and for a missing file.

import { copyFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectSameAsQemuImg, hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-compare.test.ts');

describe.skipIf(!HAS_QEMU)('vdisk compare beside qemu-img compare', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (name: string): string => join(dir, name);

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-compare'));
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', path('a.raw'), '4M']);
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 64k 100k', path('a.raw')]);
    await copyFile(path('a.raw'), path('same.raw'));
    await copyFile(path('a.raw'), path('differs.raw'));
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x01 70001 1', path('differs.raw')]);
    await copyFile(path('a.raw'), path('longer-zero.raw'));
    await truncate(path('longer-zero.raw'), 6 * 1024 * 1024);
    await copyFile(path('longer-zero.raw'), path('longer-data.raw'));
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x02 5000100 10', path('longer-data.raw')]);
    mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', path('a.raw'), path('a.qcow2')]);
  });
  afterAll(async () => cleanup?.());

  const cases: [string, string[]][] = [
    ['equal files', ['same.raw', 'a.raw']],
    ['one differing byte', ['a.raw', 'differs.raw']],
    ['a longer image with a zero tail', ['a.raw', 'longer-zero.raw']],
    ['a longer image with data in its tail', ['longer-data.raw', 'a.raw']],
    ['strict mode with different sizes', ['-s', 'a.raw', 'longer-zero.raw']],
    ['strict mode on equal files', ['-s', 'a.raw', 'same.raw']],
    ['raw against its qcow2 conversion', ['-f', 'raw', '-F', 'qcow2', 'a.raw', 'a.qcow2']],
  ];
  for (const [name, args] of cases) {
    it(`matches qemu-img for ${name}`, async () => {
      const argv = ['compare', ...args.map((arg) => (arg.includes('.') ? path(arg) : arg))];
      await expectSameAsQemuImg(argv);
    });
  }

  it('exits 2 when an image cannot be opened, as qemu-img does', async () => {
    const argv = ['compare', path('a.raw'), path('missing.raw')];
    expect((await vdisk(argv)).code).toBe(tool('qemu-img', argv).code);
  });
});
