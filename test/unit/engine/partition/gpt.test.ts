// GPT tables checked against util-linux sfdisk and gdisk's sgdisk: vdisk's headers, CRCs, backup
// copy and entries verify clean in sgdisk and read identically in sfdisk; vdisk reads sfdisk's
// tables, falls back to the backup when the primary is damaged, and refuses when both are.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { applyLayout, readPartitionTable } from '../../../../src/engine/partition/index.ts';
import { bufferIo, type PartitionIo } from '../../../../src/engine/partition/types.ts';
import { fileIo, has, scratchDir, sfdiskJson, sfdiskWrite } from './helpers.ts';

const MiB = 1024 * 1024;

async function flipByte(io: PartitionIo, offsetBytes: number): Promise<void> {
  const byte = Buffer.alloc(1);
  await io.read(offsetBytes, byte);
  byte[0] = (byte[0] ?? 0) ^ 0xff;
  await io.write!(offsetBytes, byte);
}
const hasSfdisk = has('sfdisk');
const hasSgdisk = has('sgdisk');
if (!hasSfdisk)
  console.warn('SKIPPING GPT/sfdisk round trips: sfdisk (Debian package fdisk) is not installed');
if (!hasSgdisk)
  console.warn('SKIPPING GPT verification by sgdisk: sgdisk (Debian package gdisk) is not installed');

describe.skipIf(!hasSfdisk)('GPT tables against sfdisk and sgdisk', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('writes two labelled partitions that sfdisk reads identically', async () => {
    const path = `${dir}/two.img`;
    const io = await fileIo(path, 64 * MiB);
    const table = await applyLayout(
      io,
      {
        table: 'gpt',
        diskId: '01234567-89AB-CDEF-0123-456789ABCDEF',
        partitions: [
          { sizeBytes: 20 * MiB, filesystem: 'ext4', label: 'root' },
          { type: 'vfat', label: 'données' },
        ],
      },
      path,
    );
    await io.close();
    const sf = sfdiskJson(path);
    expect(sf.label).toBe('gpt');
    expect(sf.id).toBe('01234567-89AB-CDEF-0123-456789ABCDEF');
    expect(
      table.partitions.map((p) => ({
        start: p.startSector,
        size: p.sectorCount,
        type: p.type,
        uuid: p.uuid,
        name: p.name,
      })),
    ).toEqual(
      sf.partitions.map((p) => ({ start: p.start, size: p.size, type: p.type, uuid: p.uuid, name: p.name })),
    );
    expect(sf.partitions[0]).toMatchObject({
      start: 2048,
      size: 20 * 2048,
      type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
    });
    expect(sf.partitions[1]?.type).toBe('EBD0A0A2-B9E5-4433-87C0-68B6B72699C7');
    // The last partition runs to the last usable LBA: disk sectors - 34.
    expect(table.lastUsableSector).toBe(64 * 2048 - 34);
    expect(sf.lastlba).toBe(64 * 2048 - 34);
  });

  it('lays out a sparse 3 TiB disk as GPT (protective MBR capped at 2^32-1 sectors) and refuses it as MBR', async () => {
    const path = `${dir}/huge.img`;
    const sizeBytes = 3 * 1024 * 1024 * MiB;
    const io = await fileIo(path, sizeBytes);
    await expect(applyLayout(io, { table: 'mbr', partitions: [{}] }, path)).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
    });
    const table = await applyLayout(
      io,
      { table: 'gpt', partitions: [{ sizeBytes: 2048 * 1024 * MiB }, {}] },
      path,
    );
    const protective = Buffer.alloc(16);
    await io.read(446, protective);
    await io.close();
    expect(protective[4]).toBe(0xee);
    expect(protective.readUInt32LE(12)).toBe(0xffffffff);
    const sf = sfdiskJson(path);
    expect(sf.partitions.map((p) => [p.start, p.size])).toEqual(
      table.partitions.map((p) => [p.startSector, p.sectorCount]),
    );
    expect(table.partitions[1]?.startSector).toBe(2048 + 2 ** 32);
    expect(sf.lastlba).toBe(sizeBytes / 512 - 34);
  });

  it.skipIf(!hasSgdisk)('writes headers and entry arrays whose CRCs sgdisk verifies', async () => {
    const path = `${dir}/verify.img`;
    const io = await fileIo(path, 32 * MiB);
    await applyLayout(
      io,
      {
        table: 'gpt',
        partitions: [
          { sizeBytes: MiB, type: 'bios-boot' },
          { sizeBytes: 8 * MiB, type: 'efi' },
          { type: 'linux' },
        ],
      },
      path,
    );
    await io.close();
    const report = execFileSync('sgdisk', ['-v', path], { encoding: 'utf8' });
    expect(report).toContain('No problems found');
  });

  it('reads what sfdisk wrote, names and GUIDs included', async () => {
    const path = `${dir}/theirs.img`;
    await (await fileIo(path, 64 * MiB)).close();
    sfdiskWrite(
      path,
      'label: gpt\nsize=10M, type=L, name=root\nsize=5M, type=S, name="swap space"\nsize=+, type=U\n',
    );
    const io = await fileIo(path);
    const table = await readPartitionTable(io, path);
    await io.close();
    const sf = sfdiskJson(path);
    expect(table?.table).toBe('gpt');
    expect(table?.diskId).toBe(sf.id);
    expect(table?.warnings).toEqual([]);
    expect(
      table?.partitions.map((p) => ({
        start: p.startSector,
        size: p.sectorCount,
        type: p.type,
        uuid: p.uuid,
        name: p.name || undefined,
      })),
    ).toEqual(
      sf.partitions.map((p) => ({ start: p.start, size: p.size, type: p.type, uuid: p.uuid, name: p.name })),
    );
    expect(table?.partitions.map((p) => p.typeName)).toEqual([
      'Linux filesystem',
      'Linux swap',
      'EFI System',
    ]);
  });

  it('falls back to the backup when the primary header or entry array is damaged', async () => {
    const path = `${dir}/damaged.img`;
    await (await fileIo(path, 16 * MiB)).close();
    sfdiskWrite(path, 'label: gpt\nsize=4M, type=L\nsize=+, type=L\n');
    const io = await fileIo(path);
    const before = await readPartitionTable(io, path);
    await io.write!(2 * 512 + 48, Buffer.from([0xff])); // entry 1's attributes: the array CRC breaks
    const afterArray = await readPartitionTable(io, path);
    expect(afterArray?.partitions).toEqual(before?.partitions);
    expect(afterArray?.warnings.join()).toMatch(/entry array CRC32 mismatch/);
    await flipByte(io, 512 + 60); // inside the disk GUID: header CRC breaks
    const afterHeader = await readPartitionTable(io, path);
    expect(afterHeader?.partitions).toEqual(before?.partitions);
    expect(afterHeader?.warnings.join()).toMatch(/header CRC32 mismatch/);
    await flipByte(io, io.sizeBytes - 512 + 60); // and the backup's
    await expect(readPartitionTable(io, path)).rejects.toMatchObject({ code: 'VDISK_ECORRUPT', file: path });
    await io.close();
  });
});

describe('GPT reading on hostile input', () => {
  it('rejects, without allocating, a header asking for a huge entry array', async () => {
    const disk = Buffer.alloc(4 * MiB);
    const io = bufferIo(disk);
    await applyLayout(io, { table: 'gpt', partitions: [{}] });
    // Rewrite the primary with 2^32-1 entries and a valid CRC: parseGptHeader must refuse it by size.
    const header = disk.subarray(512, 1024);
    header.writeUInt32LE(0xffffffff, 80);
    header.writeUInt32LE(0, 16);
    const { crc32 } = await import('node:zlib');
    header.writeUInt32LE(crc32(header.subarray(0, 92)), 16);
    const table = await readPartitionTable(io, 'huge.img');
    expect(table?.warnings.join()).toMatch(/entry array of \d+ bytes exceeds/);
    expect(table?.partitions).toHaveLength(1);
  });

  it('refuses a layout too big for the disk and a name longer than 36 units', async () => {
    const io = bufferIo(Buffer.alloc(2 * MiB));
    await expect(
      applyLayout(io, { table: 'gpt', partitions: [{ sizeBytes: 2 * MiB }] }),
    ).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await expect(
      applyLayout(io, { table: 'gpt', partitions: [{ label: 'x'.repeat(37) }] }),
    ).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
  });
});
