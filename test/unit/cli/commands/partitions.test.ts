// `vdisk partitions` against util-linux: the start and size of every partition, in sectors and in
// bytes, equal what `fdisk -lu` prints for the same raw image (MBR with logicals, and GPT); a
// qcow2 copy made by qemu-img lists the same partitions when the qcow2 driver is registered.

import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PartitionJson } from '../../../../src/cli/commands/partitions.ts';
import { runVdisk as cli } from '../../../helpers/run-vdisk.ts';
import { formatRegistry } from '../../../../src/engine/formats/registry.ts';
import { fileIo, has, scratchDir, sfdiskWrite } from '../../engine/partition/helpers.ts';

const hasTools = has('sfdisk') && has('fdisk');
if (!hasTools)
  console.warn('SKIPPING vdisk partitions vs fdisk -lu: fdisk/sfdisk (Debian package fdisk) not installed');
const hasQcow2 = has('qemu-img') && formatRegistry.some((driver) => driver.name === 'qcow2');
if (!hasQcow2) console.warn('SKIPPING vdisk partitions on qcow2: qemu-img or the qcow2 driver is missing');

/** fdisk -lu's device rows: [start, end, sectors] per partition, in order. */
function fdiskRows(path: string): number[][] {
  const text = execFileSync('fdisk', ['-lu', path], {
    encoding: 'utf8',
    env: { ...process.env, LC_ALL: 'C' },
  });
  return text
    .split('\n')
    .filter((line) => line.startsWith(path))
    .map((line) => {
      const fields = line.slice(path.length).replace('*', ' ').trim().split(/\s+/);
      return fields.slice(1, 4).map(Number);
    });
}

describe.skipIf(!hasTools)('vdisk partitions', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => ({ dir, cleanup } = await scratchDir()));
  afterAll(async () => cleanup());

  for (const [label, script] of [
    ['mbr', 'label: dos\n,10M,83\n,10M,c,*\n,5M,82\n,,5\n,5M,83\n,,8e\n'],
    ['gpt', 'label: gpt\nsize=10M, type=L, name=root\nsize=+, type=U\n'],
  ] as const) {
    it(`lists ${label} partitions at the offsets fdisk -lu prints`, async () => {
      const path = `${dir}/${label}.img`;
      await (await fileIo(path, 64 * 1024 * 1024)).close();
      sfdiskWrite(path, script);
      const { code, stdout } = await cli(['partitions', '--output=json', path]);
      expect(code).toBe(0);
      const json = JSON.parse(stdout) as { table: string; partitions: PartitionJson[] };
      expect(json.table).toBe(label === 'mbr' ? 'dos' : 'gpt');
      const ours = json.partitions.map((p) => [p['start-sector'], p['end-sector'], p.sectors]);
      expect(ours).toEqual(fdiskRows(path));
      for (const p of json.partitions) {
        expect(p.start).toBe(p['start-sector'] * 512);
        expect(p.length).toBe(p.sectors * 512);
      }
      const human = await cli(['partitions', path]);
      expect(human.code).toBe(0);
      expect(human.stdout).toContain(`Disklabel type: ${json.table}`);
      expect(human.stdout).toContain(String(json.partitions[0]?.start));
    });
  }

  it.skipIf(!hasQcow2)('lists the same partitions from a qcow2 copy', async () => {
    const raw = `${dir}/mbr.img`;
    const qcow2 = `${dir}/mbr.qcow2`;
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    const fromRaw = JSON.parse((await cli(['partitions', '--output=json', raw])).stdout);
    const fromQcow2 = JSON.parse((await cli(['partitions', '--output=json', qcow2])).stdout);
    expect(fromQcow2.partitions).toEqual(fromRaw.partitions);
  });

  it('says so when an image has no table, and exits 1 on a usage error', async () => {
    const path = `${dir}/blank.img`;
    await (await fileIo(path, 1024 * 1024)).close();
    const { code, stdout } = await cli(['partitions', '--output=json', path]);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ table: null, partitions: [] });
    expect((await cli(['partitions', '--output=xml', path])).code).toBe(1);
    expect((await cli(['partitions'])).code).toBe(1);
  });
});
