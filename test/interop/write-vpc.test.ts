// vpc (VHD) images created and written by vdisk, checked by qemu-img 7.2: the same geometry and guest
// size as `qemu-img create` for the same request, and content that `qemu-img compare` finds identical
// to the seeded raw image it was copied from (dynamic and fixed, with and without force_size).

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  createWithDriver,
  run,
  runStatus,
  scratchDir,
  seededBytes,
  writeSeededRaw,
  haveTools,
} from '../helpers/format-harness.ts';
import { copyImageInto } from '../helpers/copy-image.ts';

const hasQemuImg = haveTools(['qemu-img'], 'vpc write tests');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

/** `qemu-img create -f vpc` with the same -o options vdisk's create was given. */
function qemuCreateVpc(path: string, options: Record<string, string>, sizeBytes: number): void {
  const optionText = Object.entries(options)
    .map(([key, value]) => `${key}=${value}`)
    .join(',');
  run('qemu-img', [
    'create',
    '-q',
    '-f',
    'vpc',
    ...(optionText ? ['-o', optionText] : []),
    path,
    String(sizeBytes),
  ]);
}

describe.skipIf(!hasQemuImg)('vpc images written by vdisk', () => {
  const cases: Array<[string, Record<string, string>, number]> = [
    ['dynamic', {}, 10 * 1024 * 1024],
    ['fixed', { subformat: 'fixed' }, 10 * 1024 * 1024],
    ['dynamic-force-size', { force_size: 'on' }, 10_000_384],
    ['fixed-force-size', { subformat: 'fixed', force_size: 'on' }, 5 * 1024 * 1024],
    ['dynamic-odd', {}, 7_654_321],
  ];
  for (const [name, options, sizeBytes] of cases) {
    it(`creates a ${name} image qemu-img sizes as its own and reads back byte-exact`, async () => {
      const ours = join(dir, `${name}.vhd`);
      const theirs = join(dir, `${name}-qemu.vhd`);
      await createWithDriver('vpc', ours, sizeBytes, options);
      qemuCreateVpc(theirs, options, sizeBytes);
      const ourInfo = JSON.parse(run('qemu-img', ['info', '-f', 'vpc', '--output=json', ours]));
      const theirInfo = JSON.parse(run('qemu-img', ['info', '-f', 'vpc', '--output=json', theirs]));
      expect(ourInfo['virtual-size']).toBe(theirInfo['virtual-size']);
      expect(ourInfo['cluster-size']).toBe(theirInfo['cluster-size']);

      const raw = await writeSeededRaw(
        dir,
        `${name}.raw`,
        Math.floor(ourInfo['virtual-size'] / 512) * 512,
        3,
      );
      await copyImageInto(raw, ours, 'vpc');
      const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, ours]);
      expect(compared.stdout + compared.stderr).toContain('Images are identical');
      expect(compared.status).toBe(0);

      const device = await openImage(ours, { readOnly: true, format: 'vpc' });
      try {
        expect(device.sizeBytes).toBe(ourInfo['virtual-size']);
      } finally {
        await device.close();
      }
    });
  }

  it('keeps earlier blocks intact when later writes append blocks and move the footer', async () => {
    const path = join(dir, 'append.vhd');
    await createWithDriver('vpc', path, 16 * 1024 * 1024);
    const device = await openImage(path, { format: 'vpc' });
    const writes: Array<[number, Uint8Array]> = [
      [15 * 1024 * 1024 + 512, seededBytes(4096, 1)],
      [0, seededBytes(512, 2)],
      [2 * 1024 * 1024 - 100, seededBytes(300, 3)], // crosses a block boundary
      [15 * 1024 * 1024, seededBytes(512, 4)],
    ];
    try {
      for (const [offsetBytes, data] of writes) await device.write(offsetBytes, data);
      await device.writeZeroes(15 * 1024 * 1024 + 1024, 1024);
    } finally {
      await device.close();
    }
    const expected = join(dir, 'append.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', expected, '16M']);
    for (const [offsetBytes, data] of writes) {
      run('sh', [
        '-c',
        `printf '%s' "$1" | xxd -r -p | dd of="$2" bs=1 seek=${offsetBytes} conv=notrunc status=none`,
        'sh',
        Buffer.from(data).toString('hex'),
        expected,
      ]);
    }
    run('dd', [
      'if=/dev/zero',
      `of=${expected}`,
      'bs=1',
      `seek=${15 * 1024 * 1024 + 1024}`,
      'count=1024',
      'conv=notrunc',
      'status=none',
    ]);
    const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', expected, path]);
    expect(compared.stdout + compared.stderr).toContain('Images are identical');
  });
  for (const [name, options] of [
    ['dynamic', {}],
    ['fixed', { subformat: 'fixed' }],
    ['dynamic-force-size', { force_size: 'on' }],
  ] as const) {
    it(`grows a ${name} image in place (relocating blocks past a larger BAT); qemu-img reads old and new data`, async () => {
      const path = join(dir, `grow-${name}.vhd`);
      await createWithDriver('vpc', path, 6 * 1024 * 1024, options);
      const raw = await writeSeededRaw(dir, `grow-${name}.raw`, 6 * 1024 * 1024, 8);
      await copyImageInto(raw, path, 'vpc');
      const newSizeBytes = 300 * 1024 * 1024; // 150 BAT entries: the BAT outgrows its first sector
      const device = await openImage(path, { format: 'vpc' });
      const tail = seededBytes(4096, 77);
      let grownBytes = 0;
      try {
        await device.resize!(newSizeBytes, { shrink: false });
        grownBytes = device.sizeBytes;
        await device.write(grownBytes - 8192, tail);
      } finally {
        await device.close();
      }
      const reference = join(dir, `grow-${name}-qemu.vhd`);
      qemuCreateVpc(reference, options, newSizeBytes);
      const info = JSON.parse(run('qemu-img', ['info', '-f', 'vpc', '--output=json', path]));
      expect(info['virtual-size']).toBe(grownBytes);
      expect(grownBytes).toBe(
        JSON.parse(run('qemu-img', ['info', '-f', 'vpc', '--output=json', reference]))['virtual-size'],
      );
      const expected = join(dir, `grow-${name}-expected.raw`);
      run('qemu-img', ['create', '-q', '-f', 'raw', expected, String(grownBytes)]);
      run('dd', [`if=${raw}`, `of=${expected}`, 'conv=notrunc', 'status=none']);
      run('sh', [
        '-c',
        `printf '%s' "$1" | xxd -r -p | dd of="$2" bs=1 seek=${grownBytes - 8192} conv=notrunc status=none`,
        'sh',
        Buffer.from(tail).toString('hex'),
        expected,
      ]);
      const compared = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', expected, path]);
      expect(compared.stdout).toContain('Images are identical');
    });
  }
});
