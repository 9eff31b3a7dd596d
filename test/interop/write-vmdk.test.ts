// vmdk images created and written by vdisk, checked by qemu-img 7.2: every subformat qemu-img creates
// gets qemu's header, file names and descriptor fields, passes `qemu-img check`, and `qemu-img compare`
// finds it identical to the seeded raw it was filled from; zeroed grains, compressed (stream) writes and
// children of a parent (parentCID, parentFileNameHint) are read back by qemu-img the same way.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import { copyImageInto } from '../helpers/copy-image.ts';
import {
  createWithDriver,
  run,
  runStatus,
  scratchDir,
  seededBytes,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';

const hasQemuImg = haveTools(['qemu-img'], 'vmdk write tests');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

function qemuInfo(path: string) {
  return JSON.parse(run('qemu-img', ['info', '--output=json', path]));
}

describe.skipIf(!hasQemuImg)('vmdk images written by vdisk', () => {
  const subformats = [
    'monolithicSparse',
    'monolithicFlat',
    'twoGbMaxExtentSparse',
    'twoGbMaxExtentFlat',
    'streamOptimized',
  ];
  for (const subformat of subformats) {
    it(`creates ${subformat} like qemu-img; qemu-img checks and compares it clean after writes`, async () => {
      const sizeBytes = 5 * 1024 * 1024 + 512;
      const ours = join(dir, `ours-${subformat}.vmdk`);
      const theirs = join(dir, `theirs-${subformat}.vmdk`);
      await createWithDriver('vmdk', ours, sizeBytes, {
        subformat,
        adapter_type: 'lsilogic',
        hwversion: '7',
      });
      run('qemu-img', [
        'create',
        '-q',
        '-f',
        'vmdk',
        '-o',
        `subformat=${subformat},adapter_type=lsilogic,hwversion=7`,
        theirs,
        String(sizeBytes),
      ]);
      const [ourInfo, theirInfo] = [qemuInfo(ours), qemuInfo(theirs)];
      expect(ourInfo['virtual-size']).toBe(theirInfo['virtual-size']);
      expect(ourInfo['format-specific'].data['create-type']).toBe(subformat);
      const strip = (extents: Array<Record<string, unknown>>) =>
        extents.map(({ filename, ...rest }) => ({
          ...rest,
          filename: String(filename).replace(/.*(ours|theirs)-/, ''),
        }));
      expect(strip(ourInfo['format-specific'].data.extents)).toEqual(
        strip(theirInfo['format-specific'].data.extents),
      );
      if (!subformat.endsWith('Flat')) {
        // Same sparse header as qemu's, byte for byte (descriptors differ only in CID and names).
        const firstExtent = (path: string) =>
          subformat.startsWith('twoGb') ? path.replace(/\.vmdk$/, '-s001.vmdk') : path;
        const [ourHeader, theirHeader] = [
          await readFile(firstExtent(ours)),
          await readFile(firstExtent(theirs)),
        ];
        expect(ourHeader.subarray(0, 512).equals(theirHeader.subarray(0, 512))).toBe(true);
        expect(ourHeader.length).toBe(theirHeader.length);
      }
      const descriptorText =
        subformat.startsWith('monolithicSparse') || subformat === 'streamOptimized'
          ? ''
          : await readFile(ours, 'latin1');
      if (descriptorText) expect(descriptorText).toContain('ddb.adapterType = "lsilogic"');

      const raw = await writeSeededRaw(dir, `fill-${subformat}.raw`, sizeBytes, 13);
      await copyImageInto(raw, ours, 'vmdk');
      const checked = runStatus('qemu-img', ['check', ours]);
      expect(checked.stdout).toContain('No errors were found on the image.');
      const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', raw, ours]);
      expect(compared.stdout).toContain('Images are identical');
      expect(compared.status).toBe(0);
    });
  }

  it('writes zeroed grains (zeroed_grain=on) that qemu-img reads as zeros', async () => {
    const path = join(dir, 'zeroed.vmdk');
    await createWithDriver('vmdk', path, 2 * 1024 * 1024, { zeroed_grain: 'on' });
    const device = await openImage(path, { format: 'vmdk' });
    try {
      await device.write(0, seededBytes(256 * 1024, 4));
      await device.writeZeroes(64 * 1024, 128 * 1024);
    } finally {
      await device.close();
    }
    const expected = Buffer.from(seededBytes(256 * 1024, 4));
    expected.fill(0, 64 * 1024, 192 * 1024);
    const qemuRaw = join(dir, 'zeroed.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, qemuRaw]);
    expect((await readFile(qemuRaw)).subarray(0, 256 * 1024).equals(expected)).toBe(true);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', path])) as Array<{
      start: number;
      zero: boolean;
      data: boolean;
    }>;
    expect(map.find((entry) => entry.start === 64 * 1024)).toMatchObject({ zero: true, data: false });
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('writes compressed grains to a streamOptimized image, once each, as qemu does', async () => {
    const path = join(dir, 'compressed.vmdk');
    await createWithDriver('vmdk', path, 1024 * 1024, { subformat: 'streamOptimized' });
    const device = await openImage(path, { format: 'vmdk' });
    const grain = seededBytes(64 * 1024, 8);
    try {
      expect(device.compressedWriteUnitBytes).toBe(64 * 1024);
      const inner = (
        device as unknown as { inner: { writeCompressed(offset: number, data: Uint8Array): Promise<void> } }
      ).inner;
      await inner.writeCompressed(128 * 1024, grain);
      await expect(inner.writeCompressed(128 * 1024, grain)).rejects.toMatchObject({ code: 'VDISK_ENOTSUP' });
    } finally {
      await device.close();
    }
    const qemuRaw = join(dir, 'compressed.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, qemuRaw]);
    const bytes = await readFile(qemuRaw);
    expect(bytes.subarray(128 * 1024, 192 * 1024).equals(Buffer.from(grain))).toBe(true);
    expect(bytes.subarray(0, 128 * 1024).every((byte) => byte === 0)).toBe(true);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('creates a child of a vmdk parent that qemu-img reads through to the parent', async () => {
    const parent = join(dir, 'base.vmdk');
    const child = join(dir, 'overlay.vmdk');
    const raw = await writeSeededRaw(dir, 'base.raw', 4 * 1024 * 1024, 17);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, parent]);
    await createWithDriver('vmdk', child, 4 * 1024 * 1024, {}, { file: 'base.vmdk', format: 'vmdk' });
    const childInfo = qemuInfo(child);
    expect(childInfo['backing-filename']).toBe('base.vmdk');
    expect(childInfo['format-specific'].data['parent-cid']).toBe(
      qemuInfo(parent)['format-specific'].data.cid,
    );
    const device = await openImage(child);
    const patch = seededBytes(1000, 99);
    try {
      await device.write(1024 * 1024 + 300, patch);
    } finally {
      await device.close();
    }
    const expected = await readFile(raw);
    expected.set(patch, 1024 * 1024 + 300);
    const qemuRaw = join(dir, 'overlay.raw');
    run('qemu-img', ['convert', '-O', 'raw', child, qemuRaw]);
    expect((await readFile(qemuRaw)).equals(expected)).toBe(true);
    expect(runStatus('qemu-img', ['check', child]).status).toBe(0);
  });
  for (const [subformat, fromBytes, toBytes] of [
    ['monolithicSparse', 5 * 1024 * 1024, 300 * 1024 * 1024],
    ['monolithicFlat', 5 * 1024 * 1024, 300 * 1024 * 1024],
    ['twoGbMaxExtentSparse', 1536 * 1024 * 1024, 4608 * 1024 * 1024],
    ['twoGbMaxExtentFlat', 1536 * 1024 * 1024, 2560 * 1024 * 1024],
  ] as const) {
    it(`grows ${subformat} in place; qemu-img checks it and reads old and new data`, async () => {
      const path = join(dir, `grow-${subformat}.vmdk`);
      await createWithDriver('vmdk', path, fromBytes, { subformat });
      const head = seededBytes(70000, 1);
      const tail = seededBytes(70000, 2);
      const device = await openImage(path, { format: 'vmdk' });
      try {
        await device.write(4096, head);
        await device.resize!(toBytes, { shrink: false });
        expect(device.sizeBytes).toBe(toBytes);
        await device.write(toBytes - 100000, tail);
      } finally {
        await device.close();
      }
      const info = qemuInfo(path);
      expect(info['virtual-size']).toBe(toBytes);
      const extentBytes = (info['format-specific'].data.extents as Array<{ 'virtual-size': number }>).reduce(
        (sum, extent) => sum + extent['virtual-size'],
        0,
      );
      expect(extentBytes).toBe(toBytes);
      const checked = runStatus('qemu-img', ['check', path]);
      expect(checked.stdout + checked.stderr).toContain('No errors were found on the image.');
      // The two written ranges as qemu-img dd reads them (its count includes the skipped blocks).
      for (const [offsetBytes, bytes] of [
        [4096, head],
        [toBytes - 100000, tail],
      ] as const) {
        const out = join(dir, `range-${subformat}-${offsetBytes}.raw`);
        run('qemu-img', [
          'dd',
          '-f',
          'vmdk',
          '-O',
          'raw',
          `if=${path}`,
          `of=${out}`,
          'bs=512',
          `skip=${Math.floor(offsetBytes / 512)}`,
          `count=${Math.floor(offsetBytes / 512) + Math.ceil((bytes.length + (offsetBytes % 512)) / 512)}`,
        ]);
        const got = await readFile(out);
        expect(
          got.subarray(offsetBytes % 512, (offsetBytes % 512) + bytes.length).equals(Buffer.from(bytes)),
        ).toBe(true);
      }
    });
  }
  it('appends grain tables a writer left out (grain directory entries of 0) and qemu-img reads the data', async () => {
    const path = join(dir, 'no-tables.vmdk');
    await createWithDriver('vmdk', path, 4 * 1024 * 1024);
    const bytes = await readFile(path);
    // Clear both directories' first entry: grains 0..511 then have no table, as some writers leave it.
    bytes.writeUInt32LE(0, Number(bytes.readBigUInt64LE(48)) * 512);
    bytes.writeUInt32LE(0, Number(bytes.readBigUInt64LE(56)) * 512);
    await writeFile(path, bytes);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
    const data = seededBytes(200 * 1024, 12);
    const device = await openImage(path, { format: 'vmdk' });
    try {
      await device.write(64 * 1024 + 1000, data);
    } finally {
      await device.close();
    }
    expect(runStatus('qemu-img', ['check', path]).stdout).toContain('No errors were found on the image.');
    const out = join(dir, 'no-tables.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, out]);
    const expected = Buffer.alloc(4 * 1024 * 1024);
    expected.set(data, 64 * 1024 + 1000);
    expect((await readFile(out)).equals(expected)).toBe(true);
  });
});
