// vdi vs qemu-img 7.2 both ways: qemu-made dynamic and static images read byte-exact by vdisk;
// vdisk-made images have qemu's header layout, pass `qemu-img check`, and `qemu-img compare` finds
// them identical to the seeded raw they were filled from; vdisk's check agrees with qemu's on
// corrupted block maps; growing in place keeps the data and qemu-img reads the new size.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import { copyImageInto } from '../helpers/copy-image.ts';
import {
  checkWithDriver,
  createWithDriver,
  qemuRawSha256,
  run,
  runStatus,
  scratchDir,
  sha256Device,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';

const hasQemuImg = haveTools(['qemu-img'], 'vdi interop tests');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

const vdiskCheck = (path: string) => checkWithDriver('vdi', path);

describe.skipIf(!hasQemuImg)('vdi images made by qemu-img', () => {
  for (const [name, options] of [
    ['dynamic', []],
    ['static', ['-o', 'static=on']],
  ] as const) {
    it(`reads a ${name} image byte-exact`, async () => {
      const raw = await writeSeededRaw(dir, `${name}.raw`, 5 * 1024 * 1024 + 1536, 11);
      const path = join(dir, `${name}.vdi`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', ...options, raw, path]);
      const device = await openImage(path, { readOnly: true });
      try {
        expect(device.formatName).toBe('vdi');
        const qemuInfo = JSON.parse(run('qemu-img', ['info', '--output=json', path]));
        expect(device.sizeBytes).toBe(qemuInfo['virtual-size']);
        expect((await device.info()).clusterSizeBytes).toBe(qemuInfo['cluster-size']);
        expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir));
      } finally {
        await device.close();
      }
      expect((await vdiskCheck(path)).corruptions).toBe(0);
    });
  }
});

describe.skipIf(!hasQemuImg)('vdi images written by vdisk', () => {
  for (const [name, options] of [
    ['dynamic', {}],
    ['static', { static: 'on' }],
  ] as const) {
    it(`creates a ${name} image with qemu's layout, and qemu-img checks and compares it clean`, async () => {
      const sizeBytes = 6 * 1024 * 1024 + 1000; // not a sector multiple: rounded up, as qemu does
      const ours = join(dir, `ours-${name}.vdi`);
      const theirs = join(dir, `theirs-${name}.vdi`);
      await createWithDriver('vdi', ours, sizeBytes, options);
      run('qemu-img', [
        'create',
        '-q',
        '-f',
        'vdi',
        ...(name === 'static' ? ['-o', 'static=on'] : []),
        theirs,
        String(sizeBytes),
      ]);
      const [ourBytes, theirBytes] = [await readFile(ours), await readFile(theirs)];
      expect(ourBytes.length).toBe(theirBytes.length);
      // Identical apart from the two random UUIDs (image, last snapshot) at 0x188..0x1a8.
      ourBytes.fill(0, 0x188, 0x1a8);
      theirBytes.fill(0, 0x188, 0x1a8);
      expect(ourBytes.equals(theirBytes)).toBe(true);

      const raw = await writeSeededRaw(dir, `fill-${name}.raw`, 6 * 1024 * 1024 + 1024, 5);
      await copyImageInto(raw, ours, 'vdi');
      const checked = runStatus('qemu-img', ['check', ours]);
      expect(checked.stdout).toContain('No errors were found on the image.');
      expect(checked.status).toBe(0);
      const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vdi', raw, ours]);
      expect(compared.stdout).toContain('Images are identical');
      expect((await vdiskCheck(ours)).corruptions).toBe(0);
    });
  }

  it('grows a dynamic image in place; qemu-img reads the new size and the old data', async () => {
    const path = join(dir, 'grow.vdi');
    // 3.5 MiB: 4 blocks, a map of one sector with room for 128 entries.
    await createWithDriver('vdi', path, 3.5 * 1024 * 1024);
    const raw = await writeSeededRaw(dir, 'grow.raw', 3.5 * 1024 * 1024, 9);
    await copyImageInto(raw, path, 'vdi');
    const device = await openImage(path, { format: 'vdi' });
    try {
      await (
        device as unknown as { inner: { resize(size: number, o: { shrink: boolean }): Promise<void> } }
      ).inner.resize(100 * 1024 * 1024, { shrink: false });
      await device.write(99 * 1024 * 1024, new Uint8Array(512).fill(7));
    } finally {
      await device.close();
    }
    const qemuInfo = JSON.parse(run('qemu-img', ['info', '--output=json', path]));
    expect(qemuInfo['virtual-size']).toBe(100 * 1024 * 1024);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
    const head = join(dir, 'grow-head.raw');
    run('qemu-img', [
      'dd',
      '-f',
      'vdi',
      '-O',
      'raw',
      `if=${path}`,
      `of=${head}`,
      'bs=512',
      `count=${(3.5 * 1024 * 1024) / 512}`,
    ]);
    expect((await readFile(head)).equals(await readFile(raw))).toBe(true);
  });

  it('reports the block map corruptions qemu-img check reports', async () => {
    const base = join(dir, 'corrupt-base.vdi');
    await createWithDriver('vdi', base, 4 * 1024 * 1024);
    const raw = await writeSeededRaw(dir, 'corrupt.raw', 4 * 1024 * 1024, 2);
    await copyImageInto(raw, base, 'vdi');
    const pristine = await readFile(base);
    const mutations: Array<[string, (bytes: Buffer) => void]> = [
      ['duplicate entry', (bytes) => bytes.writeUInt32LE(bytes.readUInt32LE(0x200), 0x204)],
      ['entry too large', (bytes) => bytes.writeUInt32LE(1000, 0x200)],
      ['count mismatch', (bytes) => bytes.writeUInt32LE(bytes.readUInt32LE(0x184) + 1, 0x184)],
    ];
    for (const [name, mutate] of mutations) {
      const path = join(dir, `corrupt-${name.replace(/ /g, '-')}.vdi`);
      const bytes = Buffer.from(pristine);
      mutate(bytes);
      await writeFile(path, bytes);
      const qemu = runStatus('qemu-img', ['check', '--output=json', path]);
      const qemuReport = JSON.parse(qemu.stdout);
      const ours = await vdiskCheck(path);
      expect(ours.corruptions, name).toBe(qemuReport.corruptions);
      expect(ours.corruptions, name).toBeGreaterThan(0);
    }
  });
});
