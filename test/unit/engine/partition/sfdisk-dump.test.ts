// Round trips through `sfdisk --dump`: vdisk writes a table, sfdisk dumps it, sfdisk writes that dump
// onto a blank disk, and vdisk reads back the same table (ids, starts, sizes, types, names, GUIDs).

import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  applyLayout,
  type PartitionLayout,
  readPartitionTable,
} from '../../../../src/engine/partition/index.ts';
import { fileIo, has, scratchDir, sfdiskWrite } from './helpers.ts';

const MiB = 1024 * 1024;
const hasSfdisk = has('sfdisk');
if (!hasSfdisk)
  console.warn('SKIPPING sfdisk --dump round trips: sfdisk (Debian package fdisk) is not installed');

const LAYOUTS: Record<string, PartitionLayout> = {
  'mbr with logicals': {
    table: 'mbr',
    partitions: [
      { sizeBytes: 8 * MiB, type: 'efi', bootable: true },
      { sizeBytes: 8 * MiB },
      { sizeBytes: 4 * MiB, type: 'swap' },
      { sizeBytes: 4 * MiB, type: 'lvm' },
      {},
    ],
  },
  'gpt with names': {
    table: 'gpt',
    partitions: [
      { sizeBytes: 8 * MiB, type: 'efi', label: 'EFI system' },
      { sizeBytes: 8 * MiB, type: 'swap', label: 'swap' },
      { label: 'root' },
    ],
  },
};

describe.skipIf(!hasSfdisk)('sfdisk --dump round trips', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  for (const [name, layout] of Object.entries(LAYOUTS)) {
    it(`${name}: vdisk -> sfdisk --dump -> sfdisk -> vdisk gives the same table`, async () => {
      const ours = `${dir}/ours.img`;
      const theirs = `${dir}/theirs.img`;
      const io = await fileIo(ours, 64 * MiB);
      const written = await applyLayout(io, layout, ours);
      await io.close();
      const dump = execFileSync('sfdisk', ['--dump', ours], { encoding: 'utf8' });
      await (await fileIo(theirs, 64 * MiB)).close();
      sfdiskWrite(theirs, dump.replaceAll(ours, theirs));
      const readIo = await fileIo(theirs);
      const reread = await readPartitionTable(readIo, theirs);
      await readIo.close();
      expect(reread?.diskId).toBe(written.diskId);
      expect(reread?.partitions).toEqual(written.partitions);
      expect(reread?.warnings).toEqual([]);
    });
  }
});
