// A backing file may not escape its image's folder: an image from elsewhere could otherwise name any
// host file (/etc/shadow, another tenant's disk) as its backing file and have vdisk read it. The CLI
// refuses by default, with exit 1 and a message naming the file; --allow-backing-escape or
// VDISK_ALLOW_BACKING_ESCAPE=1 is the user's explicit opt-in. The engine commands the imager uses refuse too.
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runVdisk as vdisk } from '../../helpers/run-vdisk.ts';
import { convertImage } from '../../../src/engine/commands/convert-image.ts';
import { createImage } from '../../../src/engine/commands/create.ts';

let root: string;
let outside: string;
let inside: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vdisk-escape-'));
  outside = join(root, 'outside');
  inside = join(root, 'volume');
  await mkdir(outside);
  await mkdir(inside);
  expect((await vdisk(['create', '-q', '-f', 'qcow2', join(outside, 'base.qcow2'), '1M'])).code).toBe(0);
  // The overlay is made with the opt-in, as a user who trusts both files would.
  const made = await vdisk([
    '--allow-backing-escape',
    'create',
    '-q',
    '-f',
    'qcow2',
    '-b',
    '../outside/base.qcow2',
    '-F',
    'qcow2',
    join(inside, 'overlay.qcow2'),
  ]);
  expect(made.code).toBe(0);
});

afterAll(async () => {
  delete process.env.VDISK_ALLOW_BACKING_ESCAPE;
  await rm(root, { recursive: true, force: true });
});

describe('backing files outside the image folder', () => {
  it('are refused by info --backing-chain, map and convert with exit 1 and the resolved path named', async () => {
    for (const args of [
      ['info', '--backing-chain', join(inside, 'overlay.qcow2')],
      ['map', join(inside, 'overlay.qcow2')],
      ['convert', '-O', 'raw', join(inside, 'overlay.qcow2'), join(inside, 'out.raw')],
    ]) {
      const result = await vdisk(args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stderr).toContain(join(outside, 'base.qcow2'));
      expect(result.stderr).toContain('--allow-backing-escape');
    }
  });

  it('are refused when creating an overlay that names one', async () => {
    const result = await vdisk([
      'create',
      '-f',
      'qcow2',
      '-b',
      '../outside/base.qcow2',
      '-F',
      'qcow2',
      join(inside, 'b.qcow2'),
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/outside the image's folder/);
    const unsafe = await vdisk([
      'create',
      '-u',
      '-f',
      'qcow2',
      '-b',
      '/etc/passwd',
      '-F',
      'raw',
      join(inside, 'c.qcow2'),
      '1M',
    ]);
    expect(unsafe.code).toBe(1);
  });

  it('are followed with --allow-backing-escape or VDISK_ALLOW_BACKING_ESCAPE=1', async () => {
    const chain = ['info', '--backing-chain', '--output=json', join(inside, 'overlay.qcow2')];
    const flagged = await vdisk(['--allow-backing-escape', ...chain]);
    expect(flagged.code).toBe(0);
    const layers = JSON.parse(flagged.stdout) as Array<{ filename: string }>;
    // qemu's path_combine keeps the '..' in the name; the file read is outside/base.qcow2.
    expect(layers.map((layer) => layer.filename)).toEqual([
      join(inside, 'overlay.qcow2'),
      `${inside}/../outside/base.qcow2`,
    ]);
    process.env.VDISK_ALLOW_BACKING_ESCAPE = '1';
    try {
      expect((await vdisk(chain)).code).toBe(0);
    } finally {
      delete process.env.VDISK_ALLOW_BACKING_ESCAPE;
    }
    // The decision is per invocation: the next command without the flag refuses again.
    expect((await vdisk(chain)).code).toBe(1);
    // Plain info and check, like qemu-img's, do not open the backing file: they show its name only.
    expect((await vdisk(['info', join(inside, 'overlay.qcow2')])).code).toBe(0);
    expect((await vdisk(['check', join(inside, 'overlay.qcow2')])).code).toBe(0);
  });

  it('are refused by the engine commands the imager calls, unless the caller allows them', async () => {
    await expect(
      convertImage({
        sourcePath: join(inside, 'overlay.qcow2'),
        targetPath: join(inside, 'x.raw'),
        targetFormat: 'raw',
      }),
    ).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    await expect(
      createImage({
        path: join(inside, 'y.qcow2'),
        format: 'qcow2',
        options: {},
        backingFile: '../outside/base.qcow2',
        backingFormat: 'qcow2',
      }),
    ).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    await convertImage({
      sourcePath: join(inside, 'overlay.qcow2'),
      targetPath: join(inside, 'z.raw'),
      targetFormat: 'raw',
      allowBackingEscape: true,
    });
  });
});
