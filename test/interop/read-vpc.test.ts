// vpc (VHD) read by vdisk vs qemu-img 7.2: images qemu-img makes (dynamic, fixed, force_size) from a
// seeded raw read byte-exact; the third-party samples (Hyper-V, Virtual PC, Disk2vhd, Windows) give
// their documented sizes and hashes; the fuzzed afl5.img is refused with a clear error.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/engine/open.ts';
import {
  qemuRawSha256,
  run,
  SAMPLES_DIR,
  scratchDir,
  sha256Device,
  unpackSample,
  writeSeededRaw,
  haveTools,
  expectImageContent,
  hugeSamplesEnabled,
} from '../helpers/format-harness.ts';

const hasQemuImg = haveTools(['qemu-img'], 'vpc comparisons with qemu-img');
/** Hashing 127 GiB of guest zeros costs ~2 minutes of CPU per image; opt in with VDISK_HUGE_SAMPLES=1. */
const hashHuge = hugeSamplesEnabled(
  'the full sha256 of the 127 GiB VHD samples',
  'size and map are still checked',
);

const VHD = join(SAMPLES_DIR, 'vhd');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

describe.skipIf(!hasQemuImg)('vpc images made by qemu-img', () => {
  const cases: Array<[string, string[]]> = [
    ['dynamic', []],
    ['fixed', ['-o', 'subformat=fixed']],
    ['dynamic-force-size', ['-o', 'force_size=on']],
    ['fixed-force-size', ['-o', 'subformat=fixed,force_size=on']],
  ];
  for (const [name, options] of cases) {
    it(`reads a ${name} image byte-exact`, async () => {
      const raw = await writeSeededRaw(dir, `${name}.raw`, 6 * 1024 * 1024 + 4096, 7);
      const path = join(dir, `${name}.vhd`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', ...options, raw, path]);
      const qemuInfo = JSON.parse(run('qemu-img', ['info', '-f', 'vpc', '--output=json', path]));
      const device = await openImage(path, { readOnly: true, format: 'vpc' });
      try {
        expect(device.sizeBytes).toBe(qemuInfo['virtual-size']);
        expect(await sha256Device(device)).toBe(await qemuRawSha256(path, dir, 'vpc'));
        const info = await device.info();
        expect(info.clusterSizeBytes).toBe(qemuInfo['cluster-size']);
      } finally {
        await device.close();
      }
    });
  }

  it('probes a dynamic image as vpc and a fixed one as raw, as qemu-img does', async () => {
    const dynamicPath = join(dir, 'probe-dynamic.vhd');
    const fixedPath = join(dir, 'probe-fixed.vhd');
    run('qemu-img', ['create', '-q', '-f', 'vpc', dynamicPath, '4M']);
    run('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', fixedPath, '4M']);
    for (const [path, expected] of [
      [dynamicPath, 'vpc'],
      [fixedPath, 'raw'],
    ] as const) {
      const qemuFormat = JSON.parse(run('qemu-img', ['info', '--output=json', path])).format;
      const device = await openImage(path, { readOnly: true });
      try {
        expect(device.formatName).toBe(qemuFormat);
        expect(device.formatName).toBe(expected);
      } finally {
        await device.close();
      }
    }
  });
});

describe('vpc third-party samples', () => {
  const small: Array<[string, string, number, string | undefined]> = [
    ['dynamic.vhd', 'ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784', 10485760, undefined],
    ['fixed.vhd', '459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463', 10485760, 'vpc'],
    ['Shared.vhd', '8d4b8adf32abc94532237db6528e540eb757104994716ddc0a8abd7011472cb7', 3145728, 'vpc'],
    [
      'd2v-zerofilled.vhd.bz2',
      '1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143',
      263454720,
      undefined,
    ],
  ];
  for (const [name, sha256, sizeBytes, format] of small) {
    it(`reads ${name} with the documented size and hash`, async () => {
      const path = name.endsWith('.bz2') ? await unpackSample(join(VHD, name), dir) : join(VHD, name);
      await expectImageContent(path, { format: 'vpc', sizeBytes, sha256 }, { openFormat: format });
    });
  }

  it('probes the fixed samples as raw with the footer included, as qemu-img does', async () => {
    await expectImageContent(join(VHD, 'Shared.vhd'), {
      format: 'raw',
      sizeBytes: 3146240,
      sha256: '4f8029042365b0e0efaf93dda0eed8ffc63f60b4aa91b2708857a6df420ccd25',
    });
  });

  const huge: Array<[string, string, number]> = [
    [
      'hyperv2012r2-dynamic.vhd',
      'dcb4f171cbcedb416d5da34e48d5a17ecc2828a0f14c416de3669b8463cb1d8e',
      136365211648,
    ],
    [
      'virtualpc-dynamic.vhd',
      '2a4f06d5c9672ce7acfe68d55f16be1e1c96891af6a79eefe50eefae0cc5ae8d',
      136363130880,
    ],
  ];
  for (const [name, sha256, sizeBytes] of huge) {
    it(`sizes ${name} by its creator's rule (${sizeBytes} bytes) and maps it like qemu-img`, async () => {
      const device = await openImage(join(VHD, name), { readOnly: true });
      try {
        expect(device.sizeBytes).toBe(sizeBytes);
        const extents = await device.blockStatus(0, device.sizeBytes);
        const covered = extents.reduce((sum, extent) => sum + extent.lengthBytes, 0);
        expect(covered).toBe(sizeBytes);
        if (hasQemuImg) {
          const qemuMap = JSON.parse(run('qemu-img', ['map', '--output=json', join(VHD, name)])) as Array<{
            data: boolean;
            length: number;
          }>;
          const qemuDataBytes = qemuMap
            .filter((entry) => entry.data)
            .reduce((sum, entry) => sum + entry.length, 0);
          const ourDataBytes = extents
            .filter((extent) => extent.data)
            .reduce((sum, extent) => sum + extent.lengthBytes, 0);
          expect(ourDataBytes).toBe(qemuDataBytes);
        }
        if (hashHuge) expect(await sha256Device(device)).toBe(sha256);
      } finally {
        await device.close();
      }
    });
  }

  it('refuses the fuzzed afl5.img with a format error naming the BAT size', async () => {
    await expect(openImage(join(VHD, 'afl5.img'), { readOnly: true })).rejects.toMatchObject({
      code: 'VDISK_EFORMAT',
    });
    await expect(openImage(join(VHD, 'afl5.img'), { readOnly: true })).rejects.toThrow(
      /Max Table Entries too large \(1073741825\)/,
    );
  });
});
