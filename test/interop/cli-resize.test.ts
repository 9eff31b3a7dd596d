// vdisk resize against qemu-img: grown images show the new size in `qemu-img info`, keep their data
// (qemu-img compare against the original on the old range) and pass `qemu-img check`; shrinking needs
// --shrink as in qemu-img, and a shrunk qcow2 is clean and matches qemu-img's own shrink of the same image.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-resize.test.ts');
const MIB = 1024 * 1024;
/** Formats whose driver can resize, and the create options qemu-img needs for a growable image. */
const GROWABLE = formatRegistry
  .filter((driver) => driver.capabilities.resize !== 'none' && driver.capabilities.create)
  .map((driver) => driver.name)
  .filter((name) => ['raw', 'qcow2', 'qed', 'vmdk', 'vdi', 'vpc', 'vhdx', 'parallels'].includes(name));

function virtualSize(path: string): number {
  return (JSON.parse(mustRun('qemu-img', ['info', '--output=json', path])) as { 'virtual-size': number })[
    'virtual-size'
  ];
}

describe.skipIf(!HAS_QEMU)('vdisk resize, checked by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-resize'));
  });
  afterAll(async () => {
    await cleanup();
  });

  it('covers the formats that grow', () => {
    expect(GROWABLE).toEqual(expect.arrayContaining(['raw', 'qcow2']));
  });

  for (const format of GROWABLE) {
    it(`grows ${format} by +8M, keeping its data`, async () => {
      const path = join(dir, `grow.${format}`);
      const original = join(dir, `grow-original.${format}.raw`);
      expect((await vdisk(['create', '-q', '-f', format, path, '8M'])).code).toBe(0);
      mustRun('qemu-io', ['-f', format, '-c', 'write -P 0x5a 1M 2M', '-c', 'write -P 0xa5 7M 1M', path]);
      mustRun('qemu-img', ['convert', '-f', format, '-O', 'raw', path, original]);
      const before = virtualSize(path);
      const result = await vdisk(['resize', '-f', format, path, '+8M']);
      expect(result.stderr).toBe('');
      expect(result.stdout).toBe('Image resized.\n');
      if (format === 'vpc') {
        // VHD sizes are whole CHS geometries: the grown disk is the smallest one that holds the request.
        expect(virtualSize(path)).toBeGreaterThanOrEqual(before + 8 * MIB);
        expect(virtualSize(path)).toBeLessThan(before + 9 * MIB);
      } else {
        expect(virtualSize(path)).toBe(before + 8 * MIB);
      }
      // The old range reads as before, the new range as zeros.
      mustRun('qemu-img', ['resize', '-f', 'raw', original, String(before + 8 * MIB)]);
      expect(tool('qemu-img', ['compare', '-f', format, '-F', 'raw', path, original]).code).toBe(0);
      if (['qcow2', 'qed', 'vmdk', 'vdi', 'vhdx', 'parallels'].includes(format)) {
        expect(tool('qemu-img', ['check', '-f', format, path]).code).toBe(0);
      }
    });
  }

  it("refuses to shrink without --shrink, with exit 1 and qemu-img's advice", async () => {
    const path = join(dir, 'shrink.qcow2');
    expect((await vdisk(['create', '-q', '-f', 'qcow2', path, '16M'])).code).toBe(0);
    const refused = await vdisk(['resize', path, '-8M']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/Use the --shrink option to perform a shrink operation/);
    expect(virtualSize(path)).toBe(16 * MIB);
  });

  it('shrinks qcow2 with --shrink like qemu-img does: same size, same content, clean check', async () => {
    const ours = join(dir, 'ours.qcow2');
    const theirs = join(dir, 'theirs.qcow2');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', ours, '32M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 20M 4M', ours]);
    mustRun('cp', [ours, theirs]);
    expect((await vdisk(['resize', '--shrink', ours, '-16M'])).code).toBe(0);
    mustRun('qemu-img', ['resize', '--shrink', theirs, '-16M']);
    expect(virtualSize(ours)).toBe(virtualSize(theirs));
    expect(tool('qemu-img', ['compare', ours, theirs]).code).toBe(0);
    expect(tool('qemu-img', ['check', ours]).code).toBe(0);
  });
});
