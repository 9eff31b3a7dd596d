// `vdisk create -f raw` makes the file qemu-img create makes (size, content, allocation map, the
// "Formatting" line, preallocation modes, size errors), and a raw image opened by probing refuses a
// write that would turn its sector 0 into a qcow2 header.

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import { openImage } from '../../src/engine/open.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img');
warnMissing('qemu-img', 'create-raw.test.ts');

describe.skipIf(!HAS_QEMU)('vdisk create -f raw beside qemu-img create', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (name: string): string => join(dir, name);

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('create-raw'));
  });
  afterAll(async () => cleanup?.());

  const createBoth = async (args: string[]): Promise<void> => {
    const qemu = tool('qemu-img', ['create', ...args.map((arg) => arg.replace('@', path('q.raw')))]);
    const ours = await vdisk(['create', ...args.map((arg) => arg.replace('@', path('v.raw')))]);
    expect(ours.code).toBe(qemu.code);
    expect(ours.stdout).toBe(qemu.stdout.replace(path('q.raw'), path('v.raw')));
  };

  for (const [name, args] of [
    ['a plain size', ['-f', 'raw', '@', '5M']],
    ['a fractional size', ['-f', 'raw', '@', '1.5M']],
    ['a size that is not whole sectors', ['-f', 'raw', '@', '1000']],
    ['the size as an option', ['-f', 'raw', '-o', 'size=2M', '@']],
    ['preallocation=falloc', ['-f', 'raw', '-o', 'preallocation=falloc', '@', '3M']],
    ['preallocation=full', ['-f', 'raw', '-o', 'preallocation=full', '@', '3M']],
  ] as const) {
    it(`makes the same file for ${name}`, async () => {
      await createBoth([...args]);
      const [q, v] = [await stat(path('q.raw')), await stat(path('v.raw'))];
      expect(v.size).toBe(q.size);
      expect(Buffer.compare(await readFile(path('q.raw')), await readFile(path('v.raw')))).toBe(0);
      // Same allocation: the first block written (qemu's allocate_first_block), or all of it when preallocated.
      expect(mustRun('qemu-img', ['map', '--output=json', path('v.raw')])).toBe(
        mustRun('qemu-img', ['map', '--output=json', path('q.raw')]),
      );
      expect(Math.abs(v.blocks - q.blocks)).toBeLessThanOrEqual(8);
    });
  }

  it('fails like qemu-img without a size or with a bad one', async () => {
    const missing = await vdisk(['create', '-f', 'raw', path('none.raw')]);
    expect(missing.code).toBe(tool('qemu-img', ['create', '-f', 'raw', path('none.raw')]).code);
    const bad = await vdisk(['create', '-f', 'raw', path('bad.raw'), '12Q']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('Invalid image size specified');
  });

  it.skipIf(!formatRegistry.some((driver) => driver.name === 'qcow2'))(
    'refuses to write a qcow2 header into a probed raw image',
    async () => {
      mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path('header.qcow2'), '1M']);
      const header = (await readFile(path('header.qcow2'))).subarray(0, 512);
      mustRun('qemu-img', ['create', '-q', '-f', 'raw', path('victim.raw'), '1M']);
      const probed = await openImage(path('victim.raw'));
      expect(probed.formatName).toBe('raw');
      await expect(probed.write(0, header)).rejects.toMatchObject({
        code: 'VDISK_EPERM',
        file: path('victim.raw'),
      });
      await probed.write(4096, header);
      await probed.close();
      const explicit = await openImage(path('victim.raw'), { format: 'raw' });
      await explicit.write(0, header);
      await explicit.close();
      expect(JSON.parse(mustRun('qemu-img', ['info', '--output=json', path('victim.raw')])).format).toBe(
        'qcow2',
      );
    },
  );
});
