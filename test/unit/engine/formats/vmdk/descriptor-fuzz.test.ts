// Property test: generated VMDK descriptor files (any mix of extent lines with odd sizes, unknown
// types, escaping or missing names, absurd offsets, junk lines) open and read, or fail with a
// VdiskError code; never a crash, a hang, or a read outside the descriptor's folder.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir } from '../../../../helpers/format-harness.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
afterAll(async () => cleanup());

const extentLine = fc
  .record({
    access: fc.constantFrom('RW', 'RDONLY', 'NOACCESS', 'rw'),
    sectors: fc.constantFrom('0', '1', '2048', '8192', '99999999999999999999', '-5'),
    type: fc.constantFrom('FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'BOGUS'),
    name: fc.constantFrom(
      '"flat.bin"',
      '"sparse.vmdk"',
      '"../outside.bin"',
      '"/etc/passwd"',
      '"missing.bin"',
      '""',
      '',
    ),
    offset: fc.constantFrom('', ' 0', ' 1', ' 4096', ' 18446744073709551615'),
  })
  .map(({ access, sectors, type, name, offset }) => `${access} ${sectors} ${type} ${name}${offset}`);

const junkLine = fc.constantFrom(
  'createType="monolithicFlat"',
  'createType="twoGbMaxExtentSparse"',
  'createType="bogus"',
  'parentCID=12',
  'CID=zz',
  'ddb.geometry.heads = "0"',
  '====',
  '#',
);

describe('vmdk descriptor mutations', () => {
  it('open and read, or fail with a VdiskError code', async () => {
    const folder = join(dir, 'inner');
    await mkdir(folder, { recursive: true });
    await writeFile(join(folder, 'flat.bin'), Buffer.alloc(1024 * 1024, 7));
    await writeFile(join(dir, 'outside.bin'), Buffer.alloc(1024 * 1024, 9));
    await createWithDriver('vmdk', join(folder, 'sparse.vmdk'), 2 * 1024 * 1024);
    let escaped = 0;
    let opened = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(extentLine, junkLine), { minLength: 1, maxLength: 6 }),
        async (lines) => {
          const path = join(folder, 'desc.vmdk');
          await writeFile(
            path,
            `# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n${lines.join('\n')}\n`,
          );
          try {
            const device = await openImage(path, { readOnly: true, format: 'vmdk' });
            try {
              const lengthBytes = Math.min(device.sizeBytes, 1024 * 1024);
              const buffer = new Uint8Array(lengthBytes);
              await device.read(0, buffer);
              await device.blockStatus(0, device.sizeBytes);
              if (buffer.includes(9)) escaped++;
              opened++;
            } finally {
              await device.close();
            }
          } catch (err) {
            if (!isVdiskError(err)) throw err;
          }
        },
      ),
      { numRuns: 200, seed: 7, interruptAfterTimeLimit: 30_000 },
    );
    // Bytes of ../outside.bin (all 9) never reach a reader.
    expect(escaped).toBe(0);
    expect(opened).toBeGreaterThan(10);
  });
});
