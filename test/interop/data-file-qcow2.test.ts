// qcow2 images with an external data file (-o data_file=NAME,data_file_raw=on|off), judged by qemu-img:
// vdisk creates them byte-identical to qemu-img create; vdisk's writes into a qemu-made image and
// qemu's into a vdisk-made one read back the same, pass qemu-img check and, with data_file_raw, leave
// a data file that is itself the disk. qemu 7.2 resolves the name against its working folder, so qemu
// runs inside each image's folder here; vdisk resolves it against the image's folder wherever it runs.

import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/engine/block-device.ts';
import { openImage } from '../../src/engine/open.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'data-file-qcow2.test.ts');

const MiB = 1024 * 1024;
/** The same guest writes as qemu-io commands and as BlockDevice calls. */
const QEMU_WORKLOAD = [
  'write -P 0x41 1M 100k',
  'write -z 3M 64k',
  'write -P 0x42 4M 64k',
  'discard 4M 64k',
  'write -P 0x43 5M 64k',
  'write -z 5M 64k',
  'write -P 0x44 0 512',
];
async function workload(device: BlockDevice): Promise<void> {
  await device.write(MiB, Buffer.alloc(100 * 1024, 0x41));
  await device.writeZeroes(3 * MiB, 65536);
  await device.write(4 * MiB, Buffer.alloc(65536, 0x42));
  await device.discard(4 * MiB, 65536);
  await device.write(5 * MiB, Buffer.alloc(65536, 0x43));
  await device.writeZeroes(5 * MiB, 65536);
  await device.write(0, Buffer.alloc(512, 0x44));
}

describe.skipIf(!HAS_QEMU)('qcow2 external data files, judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (...names: string[]): string => join(dir, ...names);
  /** Byte equality of two files (toEqual on megabyte Buffers is very slow). */
  const sameBytes = async (a: string, b: string): Promise<void> => {
    expect((await readFile(a)).equals(await readFile(b))).toBe(true);
  };
  /** qemu-img in `folder` (where it resolves data file names). */
  const qemuIn = (folder: string, args: string[]): string => mustRun('qemu-img', args, path(folder));

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('data-file-qcow2'));
    for (const folder of ['expected', 'vdisk-raw', 'qemu-raw', 'vdisk-plain', 'qemu-plain', 'escape/inner'])
      await mkdir(path(folder), { recursive: true });
    // What the guest should read after the workload: the same writes on a raw image.
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', path('expected', 'disk.raw'), '8M']);
    mustRun('qemu-io', [
      '-f',
      'raw',
      ...QEMU_WORKLOAD.flatMap((command) => ['-c', command]),
      path('expected', 'disk.raw'),
    ]);
  });
  afterAll(async () => cleanup?.());

  it.each([
    ['raw', 'data_file=d.raw,data_file_raw=on'],
    ['plain', 'data_file=d.bin'],
  ])('creates a %s data-file image byte-identical to qemu-img create', async (kind, options) => {
    expect(
      (await vdisk(['create', '-q', '-f', 'qcow2', '-o', options, path(`vdisk-${kind}`, 'i.qcow2'), '8M']))
        .code,
    ).toBe(0);
    qemuIn(`qemu-${kind}`, ['create', '-q', '-f', 'qcow2', '-o', options, 'i.qcow2', '8M']);
    await sameBytes(path(`vdisk-${kind}`, 'i.qcow2'), path(`qemu-${kind}`, 'i.qcow2'));
    const dataName = kind === 'raw' ? 'd.raw' : 'd.bin';
    expect((await stat(path(`vdisk-${kind}`, dataName))).size).toBe(
      (await stat(path(`qemu-${kind}`, dataName))).size,
    );
    const ours = JSON.parse(
      (await vdisk(['info', '--output=json', path(`vdisk-${kind}`, 'i.qcow2')])).stdout,
    ) as {
      'format-specific': unknown;
    };
    const theirs = JSON.parse(qemuIn(`vdisk-${kind}`, ['info', '--output=json', 'i.qcow2'])) as {
      'format-specific': unknown;
    };
    expect(ours['format-specific']).toEqual(theirs['format-specific']);
  });

  it.each(['raw', 'plain'])(
    'writes into a qemu-made %s data-file image as qemu does; check clean',
    async (kind) => {
      const device = await openImage(path(`qemu-${kind}`, 'i.qcow2'));
      await workload(device);
      await device.close();
      const check = tool('qemu-img', ['check', 'i.qcow2'], path(`qemu-${kind}`));
      expect(check.stdout).toContain('No errors were found on the image.');
      expect(check.code).toBe(0);
      // vdisk check counts the same (allocated and fragmented clusters of the data file included).
      const ours = await vdisk(['check', '--output=json', path(`qemu-${kind}`, 'i.qcow2')]);
      expect({ ...JSON.parse(ours.stdout), filename: 'i.qcow2' }).toEqual(
        JSON.parse(qemuIn(`qemu-${kind}`, ['check', '--output=json', 'i.qcow2'])),
      );
      qemuIn(`qemu-${kind}`, ['convert', '-O', 'raw', 'i.qcow2', 'out.raw']);
      await sameBytes(path(`qemu-${kind}`, 'out.raw'), path('expected', 'disk.raw'));
      if (kind === 'raw') {
        // The data file alone is the disk.
        await sameBytes(path('qemu-raw', 'd.raw'), path('expected', 'disk.raw'));
      }
    },
  );

  it.each(['raw', 'plain'])('reads what qemu wrote into a vdisk-made %s data-file image', async (kind) => {
    mustRun(
      'qemu-io',
      ['-f', 'qcow2', ...QEMU_WORKLOAD.flatMap((command) => ['-c', command]), 'i.qcow2'],
      path(`vdisk-${kind}`),
    );
    // From another working folder: vdisk resolves the data file against the image's folder.
    expect(
      (
        await vdisk([
          'convert',
          '-O',
          'raw',
          path(`vdisk-${kind}`, 'i.qcow2'),
          path(`vdisk-${kind}`, 'back.raw'),
        ])
      ).code,
    ).toBe(0);
    await sameBytes(path(`vdisk-${kind}`, 'back.raw'), path('expected', 'disk.raw'));
    const map = JSON.parse(
      (await vdisk(['map', '--output=json', path(`vdisk-${kind}`, 'i.qcow2')])).stdout,
    ) as unknown;
    expect(map).toEqual(JSON.parse(qemuIn(`vdisk-${kind}`, ['map', '--output=json', 'i.qcow2'])));
  });

  it('amends data_file (rename) and data_file_raw (off only) as qemu-img amend does', async () => {
    await copyFile(path('vdisk-raw', 'i.qcow2'), path('vdisk-raw', 'k.qcow2'));
    await copyFile(path('vdisk-raw', 'd.raw'), path('vdisk-raw', 'renamed.raw'));
    const renamed = await vdisk([
      'amend',
      '-o',
      'data_file=renamed.raw,data_file_raw=off',
      path('vdisk-raw', 'k.qcow2'),
    ]);
    expect(renamed.code).toBe(0);
    const info = JSON.parse(qemuIn('vdisk-raw', ['info', '--output=json', 'k.qcow2'])) as {
      'format-specific': { data: Record<string, unknown> };
    };
    expect(info['format-specific'].data).toMatchObject({
      'data-file': 'renamed.raw',
      'data-file-raw': false,
    });
    expect(tool('qemu-img', ['check', 'k.qcow2'], path('vdisk-raw')).code).toBe(0);
    qemuIn('vdisk-raw', ['convert', '-O', 'raw', 'k.qcow2', 'k.raw']);
    await sameBytes(path('vdisk-raw', 'k.raw'), path('expected', 'disk.raw'));
    const backOn = await vdisk(['amend', '-o', 'data_file_raw=on', path('vdisk-raw', 'k.qcow2')]);
    expect(backOn.code).toBe(1);
    expect(backOn.stderr).toContain('data-file-raw cannot be set on existing images');
    const missing = await vdisk(['amend', '-o', 'data_file=missing.raw', path('vdisk-raw', 'k.qcow2')]);
    expect(missing.code).toBe(1);
  });

  it('refuses a data file outside the image folder unless escapes are allowed, and what it cannot do', async () => {
    const inner = path('escape', 'inner', 'i.qcow2');
    const made = await vdisk(['create', '-q', '-f', 'qcow2', '-o', 'data_file=../outside.raw', inner, '1M']);
    expect(made.code).toBe(1);
    expect(made.stderr).toMatch(/data file '..\/outside.raw' resolves to .* outside the image's folder/);
    qemuIn('escape/inner', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'data_file=../outside.raw',
      'i.qcow2',
      '1M',
    ]);
    await expect(openImage(inner, { readOnly: true })).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    const device = await openImage(inner, { allowBackingEscape: true });
    await device.write(0, Buffer.alloc(4096, 0x5a));
    await device.close();
    const outside = await readFile(path('escape', 'outside.raw'));
    expect(outside.subarray(0, 4096).equals(Buffer.alloc(4096, 0x5a))).toBe(true);

    await copyFile(path('vdisk-plain', 'i.qcow2'), path('vdisk-plain', 'j.qcow2'));
    const snapshot = await vdisk(['snapshot', '-c', 's1', path('vdisk-plain', 'j.qcow2')]);
    expect(snapshot.code).toBe(1);
    expect(snapshot.stderr).toContain('external data file');
    const resized = await vdisk(['resize', path('vdisk-plain', 'j.qcow2'), '+1M']);
    expect(resized.code).toBe(1);
    const v2 = await vdisk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'compat=0.10,data_file=x.raw',
      path('vdisk-plain', 'v2.qcow2'),
      '1M',
    ]);
    expect(v2.code).toBe(1);
    expect(v2.stderr).toContain('compatibility level 1.1');
  });
});
