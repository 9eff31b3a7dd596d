// MBR tables checked against util-linux sfdisk: what vdisk writes sfdisk reads (same starts, sizes,
// types, boot flags, logical partitions in an EBR chain), and what sfdisk writes vdisk reads.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayout, readPartitionTable } from '../../../../src/engine/partition/index.ts';
import { bufferIo } from '../../../../src/engine/partition/types.ts';
import { fileIo, has, scratchDir, sfdiskJson, sfdiskWrite } from './helpers.ts';

const MiB = 1024 * 1024;
const hasSfdisk = has('sfdisk');
if (!hasSfdisk)
  console.warn('SKIPPING MBR/sfdisk round trips: sfdisk (Debian package fdisk) is not installed');

describe.skipIf(!hasSfdisk)('MBR tables against sfdisk', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('writes a one-partition layout that sfdisk reads as 2048..end, type 83', async () => {
    const path = `${dir}/one.img`;
    const io = await fileIo(path, 64 * MiB);
    const table = await applyLayout(
      io,
      { table: 'mbr', partitions: [{ type: 'linux' }], diskId: '0xdeadbeef' },
      path,
    );
    await io.close();
    const sf = sfdiskJson(path);
    expect(sf.label).toBe('dos');
    expect(sf.id).toBe('0xdeadbeef');
    expect(sf.partitions.map((p) => [p.start, p.size, Number.parseInt(p.type, 16)])).toEqual([
      [2048, 64 * 2048 - 2048, 0x83],
    ]);
    expect(table.partitions.map((p) => [p.startSector, p.sectorCount])).toEqual([[2048, 64 * 2048 - 2048]]);
  });

  it('writes primaries, an extended partition and logicals that sfdisk reads back identically', async () => {
    const path = `${dir}/six.img`;
    const io = await fileIo(path, 64 * MiB);
    const table = await applyLayout(
      io,
      {
        table: 'mbr',
        partitions: [
          { sizeBytes: 10 * MiB, type: '83' },
          { sizeBytes: 10 * MiB, type: 'vfat', bootable: true },
          { sizeBytes: 5 * MiB, type: 'swap' },
          { sizeBytes: 5 * MiB, type: 'linux' },
          { sizeBytes: 3 * MiB + 1, type: 'lvm' },
          { type: '0x83' },
        ],
      },
      path,
    );
    await io.close();
    const sf = sfdiskJson(path);
    const theirs = sf.partitions.map((p) => ({
      number: Number(/(\d+)$/.exec(p.node)?.[1]),
      start: p.start,
      size: p.size,
      type: Number.parseInt(p.type, 16),
      bootable: p.bootable ?? false,
    }));
    const ours = table.partitions.map((p) => ({
      number: p.number,
      start: p.startSector,
      size: p.sectorCount,
      type: Number.parseInt(p.type, 16),
      bootable: p.bootable ?? false,
    }));
    expect(ours).toEqual(theirs);
    expect(ours.map((p) => p.type)).toEqual([0x83, 0x0c, 0x82, 0x05, 0x83, 0x8e, 0x83]);
    // 3 MiB + 1 byte rounds up to whole sectors; every start stays 1 MiB aligned.
    expect(ours.find((p) => p.number === 6)?.size).toBe(3 * 2048 + 1);
    for (const p of ours) if (p.type !== 0x05) expect(p.start % 2048).toBe(0);
  });

  it('reads what sfdisk wrote, logicals included, with byte offsets', async () => {
    const path = `${dir}/theirs.img`;
    await (await fileIo(path, 64 * MiB)).close();
    sfdiskWrite(path, 'label: dos\nlabel-id: 0x01020304\n,10M,83\n,10M,c,*\n,5M,82\n,,5\n,5M,83\n,,8e\n');
    const io = await fileIo(path);
    const table = await readPartitionTable(io, path);
    await io.close();
    const sf = sfdiskJson(path);
    expect(table?.table).toBe('mbr');
    expect(table?.diskId).toBe(sf.id);
    expect(table?.warnings).toEqual([]);
    expect(
      table?.partitions.map((p) => [p.startSector, p.sectorCount, Number.parseInt(p.type, 16), p.bootable]),
    ).toEqual(sf.partitions.map((p) => [p.start, p.size, Number.parseInt(p.type, 16), p.bootable ?? false]));
    expect(table?.partitions.map((p) => p.startBytes)).toEqual(sf.partitions.map((p) => p.start * 512));
    expect(table?.partitions.map((p) => p.kind)).toEqual([
      'primary',
      'primary',
      'primary',
      'extended',
      'logical',
      'logical',
    ]);
  });

  it('replaces a GPT with an MBR and wipes both GPT headers, so sfdisk sees dos', async () => {
    const path = `${dir}/was-gpt.img`;
    await (await fileIo(path, 16 * MiB)).close();
    sfdiskWrite(path, 'label: gpt\n,,L\n');
    const io = await fileIo(path);
    await applyLayout(io, { table: 'mbr', partitions: [{}] }, path);
    await io.close();
    expect(sfdiskJson(path).label).toBe('dos');
  });
});

describe('MBR reading on hostile input', () => {
  function diskWithMbr(sizeBytes: number): Buffer {
    const disk = Buffer.alloc(sizeBytes);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    return disk;
  }
  function slot(sector: Buffer, index: number, typeByte: number, start: number, count: number): void {
    const at = 446 + index * 16;
    sector[at + 4] = typeByte;
    sector.writeUInt32LE(start, at + 8);
    sector.writeUInt32LE(count, at + 12);
  }

  it('stops at an EBR chain that loops back on itself, with a warning', async () => {
    const disk = diskWithMbr(4 * MiB);
    slot(disk, 0, 0x05, 2048, 4096);
    const ebr = disk.subarray(2048 * 512, 2049 * 512);
    ebr[510] = 0x55;
    ebr[511] = 0xaa;
    slot(ebr, 0, 0x83, 2048, 100);
    slot(ebr, 1, 0x05, 0, 100); // next EBR = this one
    const table = await readPartitionTable(bufferIo(disk), 'loop.img');
    expect(table?.partitions.filter((p) => p.kind === 'logical')).toHaveLength(1);
    expect(table?.warnings.some((w) => w.includes('loops back'))).toBe(true);
  });

  it('is not fooled by a boot sector whose status bytes are not 0x00/0x80', async () => {
    const disk = diskWithMbr(MiB);
    disk[446] = 0x12;
    expect(await readPartitionTable(bufferIo(disk), 'fat.img')).toBeUndefined();
  });

  it('reports no table on an all-zero disk and on a disk shorter than a sector', async () => {
    expect(await readPartitionTable(bufferIo(Buffer.alloc(MiB)), 'zero.img')).toBeUndefined();
    expect(await readPartitionTable(bufferIo(Buffer.alloc(100)), 'tiny.img')).toBeUndefined();
  });

  it('types a partition from its filesystem, and as Linux when the filesystem is none', async () => {
    const filesystems = ['ext4', 'xfs', 'btrfs', 'vfat', 'swap', 'none'];
    for (const table of ['mbr', 'gpt'] as const) {
      const written = await applyLayout(bufferIo(Buffer.alloc(16 * MiB)), {
        table,
        partitions: filesystems.map((filesystem, index) =>
          index === filesystems.length - 1 ? { filesystem } : { filesystem, sizeBytes: MiB },
        ),
      });
      expect(written.partitions.filter((p) => p.kind !== 'extended').map((p) => p.typeName)).toEqual(
        table === 'mbr'
          ? ['Linux', 'Linux', 'Linux', 'W95 FAT32 (LBA)', 'Linux swap / Solaris', 'Linux']
          : [
              'Linux filesystem',
              'Linux filesystem',
              'Linux filesystem',
              'Microsoft basic data',
              'Linux swap',
              'Linux filesystem',
            ],
      );
    }
  });

  it('refuses a layout that does not fit, with VDISK_EINVAL', async () => {
    const io = bufferIo(Buffer.alloc(4 * MiB));
    await expect(
      applyLayout(io, { table: 'mbr', partitions: [{ sizeBytes: 8 * MiB }] }),
    ).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
    await expect(
      applyLayout(io, { table: 'mbr', partitions: [{}, { sizeBytes: MiB }] }),
    ).rejects.toMatchObject({ code: 'VDISK_EINVAL', option: 'layout' });
    await expect(applyLayout(io, { table: 'mbr', partitions: [{ type: 'ee' }] })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
    });
  });
});
