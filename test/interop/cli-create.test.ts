// `vdisk create` prints qemu-img create's "Formatting ..." line (qemu's option order, defaults and
// byte-count sizes) for every format vdisk can create, and the images it makes open in qemu-img
// with the same virtual size.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatRegistry } from '../../src/engine/formats/registry.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img');
warnMissing('qemu-img', 'cli-create.test.ts');

const CASES: [format: string, options: string[], size: string | undefined][] = [
  ['qcow2', [], '4G'],
  [
    'qcow2',
    ['-o', 'compat=0.10,preallocation=metadata,cluster_size=4k,lazy_refcounts=off,refcount_bits=16'],
    '1M',
  ],
  ['qcow2', ['-b', 'base.raw', '-F', 'raw'], undefined],
  ['raw', ['-o', 'preallocation=full,size=1M'], undefined],
  ['raw', [], '1000'],
  ['vdi', ['-o', 'static=on'], '1M'],
  ['vpc', ['-o', 'subformat=fixed,force_size=on'], '1M'],
  ['qed', ['-b', 'base.raw', '-F', 'raw', '-o', 'table_size=4,cluster_size=128k'], '4M'],
  ['vhdx', ['-o', 'block_size=1M,log_size=1M'], '8M'],
  ['parallels', ['-o', 'cluster_size=512k'], '1M'],
  ['vmdk', [], '1M'],
];

describe.skipIf(!HAS_QEMU)('vdisk create beside qemu-img create', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-create'));
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'base.raw'), '3M']);
  });
  afterAll(async () => cleanup?.());

  CASES.forEach(([format, options, size], index) => {
    const registered = formatRegistry.some((driver) => driver.name === format && driver.create);
    it.skipIf(!registered)(
      `prints the same line and makes an image of the same size: ${format} ${options.join(' ')}`,
      async () => {
        // Backing names are relative to the new image, so both images sit beside base.raw.
        const argv = (name: string): string[] => [
          'create',
          '-f',
          format,
          ...options,
          join(dir, name),
          ...(size ? [size] : []),
        ];
        const qemuName = `q${index}.${format}`;
        const oursName = `v${index}.${format}`;
        const qemu = tool('qemu-img', argv(qemuName));
        const ours = await vdisk(argv(oursName));
        expect({ code: ours.code, stdout: ours.stdout.replace(oursName, qemuName) }).toEqual({
          code: qemu.code,
          stdout: qemu.stdout,
        });
        const sizeOf = (name: string): number =>
          JSON.parse(mustRun('qemu-img', ['info', '--output=json', join(dir, name)]))['virtual-size'];
        expect(sizeOf(oursName)).toBe(sizeOf(qemuName));
      },
    );
  });
});
