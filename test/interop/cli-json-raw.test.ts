// vdisk's info, map, measure and check print what qemu-img 7.2 prints for the same raw images:
// JSON byte for byte (keys, order, layout) and the human forms, plus check's exit status 63.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectSameAsQemuImg, hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-json-raw.test.ts');

describe.skipIf(!HAS_QEMU)('vdisk on raw images, beside qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let sparse: string;
  let odd: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-raw'));
    sparse = join(dir, 'sparse.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', sparse, '8M']);
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 1M 192k', '-c', 'write -P 0x22 5M 4k', sparse]);
    odd = join(dir, 'odd size.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', odd, '1000']);
  });
  afterAll(async () => cleanup?.());

  it('info --output=json and human', async () => {
    for (const path of [sparse, odd]) {
      await expectSameAsQemuImg(['info', '--output=json', path]);
      await expectSameAsQemuImg(['info', path]);
      await expectSameAsQemuImg(['info', '-f', 'raw', '--output=json', path]);
    }
  });

  it('map --output=json and human, whole and windowed', async () => {
    await expectSameAsQemuImg(['map', '--output=json', sparse]);
    await expectSameAsQemuImg(['map', sparse]);
    await expectSameAsQemuImg(['map', '--output=json', '--start-offset=1M', '--max-length=2M', sparse]);
    await expectSameAsQemuImg(['map', '--output=json', '--max-length=0', sparse]);
    await expectSameAsQemuImg(['map', '--output=json', '--start-offset=100M', sparse]);
  });

  it('measure for raw output, from a file and from --size', async () => {
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'raw', sparse]);
    await expectSameAsQemuImg(['measure', '-O', 'raw', sparse]);
    await expectSameAsQemuImg(['measure', '--output=json', '-O', 'raw', '--size', '1000']);
    await expectSameAsQemuImg(['measure', '-O', 'raw', '--size', '3G']);
  });

  it('check says raw has no checks, with exit status 63', async () => {
    const qemu = tool('qemu-img', ['check', sparse]);
    const ours = await vdisk(['check', sparse]);
    expect(ours.code).toBe(qemu.code);
    expect(ours.stderr.replace(/^vdisk: /, '')).toBe(qemu.stderr.replace(/^qemu-img: /, ''));
  });

  it('info on a missing file fails with exit status 1 and names the file', async () => {
    const missing = join(dir, 'missing.raw');
    const ours = await vdisk(['info', missing]);
    expect(ours.code).toBe(tool('qemu-img', ['info', missing]).code);
    expect(ours.stderr).toBe(`vdisk: ${missing}: No such file or directory\n`);
  });
});
