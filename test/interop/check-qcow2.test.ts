// vdisk's qcow2 check agrees with `qemu-img check --output=json` on clean images (qemu-made, fragmented,
// compressed) and on images the test damages on purpose (leaked clusters, refcounts too low or too high,
// unaligned L2 entries), and `-r leaks` / `-r all` repairs leave images qemu-img calls clean.

import { copyFile, open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckReport, RepairMode } from '../../src/engine/formats/driver.ts';
import { findDriver } from '../../src/engine/formats/registry.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { has, run, runStatus, scratchDir, writeSeededRaw } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED check-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

interface QemuCheck {
  leaks?: number;
  corruptions?: number;
  'check-errors': number;
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

function qemuCheck(path: string): QemuCheck {
  const result = runStatus('qemu-img', ['check', '--output=json', path]);
  return JSON.parse(result.stdout) as QemuCheck;
}

async function vdiskCheck(path: string, repair: RepairMode = 'none'): Promise<CheckReport> {
  const file = await NodeHostFile.open(path, { readOnly: repair === 'none' });
  try {
    const check = findDriver('qcow2').check;
    if (!check) throw new Error('qcow2 driver has no check');
    return await check(
      { path, file, readOnly: repair === 'none', openBacking: undefined, options: {} },
      repair,
    );
  } finally {
    await file.close();
  }
}

function expectAgreement(ours: CheckReport, theirs: QemuCheck): void {
  expect({
    leaks: ours.leaks,
    corruptions: ours.corruptions,
    imageEnd: ours.imageEndOffsetBytes,
    total: ours.totalClusters,
    allocated: ours.allocatedClusters,
    fragmented: ours.fragmentedClusters,
    compressed: ours.compressedClusters,
  }).toEqual({
    leaks: theirs.leaks ?? 0,
    corruptions: theirs.corruptions ?? 0,
    imageEnd: theirs['image-end-offset'],
    total: theirs['total-clusters'],
    allocated: theirs['allocated-clusters'],
    fragmented: theirs['fragmented-clusters'] ?? 0,
    compressed: theirs['compressed-clusters'] ?? 0,
  });
}

/** Byte offset of the refcount entry (16-bit refcounts, one refcount block at table entry 0) for `cluster`. */
async function refcountBlockOffset(path: string): Promise<number> {
  const handle = await open(path, 'r');
  const header = Buffer.alloc(64);
  await handle.read(header, 0, 64, 0);
  const table = Buffer.alloc(8);
  await handle.read(table, 0, 8, Number(header.readBigUInt64BE(48)));
  await handle.close();
  return Number(table.readBigUInt64BE(0));
}

async function patch(path: string, offsetBytes: number, bytes: Buffer): Promise<void> {
  const handle = await open(path, 'r+');
  await handle.write(bytes, 0, bytes.length, offsetBytes);
  await handle.close();
}

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value);
  return buffer;
}

describe.skipIf(!HAS_QEMU)('qcow2 check agrees with qemu-img check', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let pristine: string;
  let firstDataOffset: number;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    const raw = await writeSeededRaw(dir, 'seed.raw', 4 << 20, 3);
    pristine = join(dir, 'pristine.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, pristine]);
    // Fragment it: rewrite clusters out of order from a second layer of writes.
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 1 3M 64k',
      '-c',
      'write -P 2 64k 64k',
      '-c',
      'write -z -u 2M 128k',
      pristine,
    ]);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', pristine])) as Array<{
      data: boolean;
      offset?: number;
    }>;
    firstDataOffset = map.find((entry) => entry.data && entry.offset !== undefined)?.offset ?? 0;
  });
  afterAll(async () => cleanup());

  async function damaged(name: string, damage: (path: string) => Promise<void>): Promise<string> {
    const path = join(dir, `${name}.qcow2`);
    await copyFile(pristine, path);
    await damage(path);
    return path;
  }

  it('clean, fragmented image made by qemu', async () => {
    expectAgreement(await vdiskCheck(pristine), qemuCheck(pristine));
  });

  it('compressed image made by convert -c', async () => {
    const path = join(dir, 'compressed.qcow2');
    run('qemu-img', ['convert', '-c', '-O', 'qcow2', pristine, path]);
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.compressedClusters).toBeGreaterThan(0);
  });

  it('persistent dirty bitmaps (directory, tables and data clusters are references, not leaks)', async () => {
    const path = join(dir, 'bitmaps.qcow2');
    await copyFile(pristine, path);
    run('qemu-img', ['bitmap', '--add', path, 'b0']);
    run('qemu-img', ['bitmap', '--add', '-g', '65536', path, 'b1']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 1M 1M', path]);
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.leaks).toBe(0);
  });

  it('extended L2 entries', async () => {
    const path = join(dir, 'extended.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', path, '8M']);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 1 4096 70000',
      '-c',
      'write -z 3M 10000',
      '-c',
      'write -P 3 5M 1M',
      path,
    ]);
    expectAgreement(await vdiskCheck(path), qemuCheck(path));
  });

  it('leaked clusters past the used end (and -r leaks repairs them)', async () => {
    const path = await damaged('leak', async (image) => {
      const block = await refcountBlockOffset(image);
      const fileSize = (await stat(image)).size;
      const cluster = Math.ceil(fileSize / 65536);
      await patch(image, cluster * 65536 + 65535, Buffer.from([0]));
      await patch(image, block + cluster * 2, u16(1));
      await patch(image, block + (cluster + 1) * 2, u16(1));
    });
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    // The second leaked cluster lies past the end of the file: qemu (and vdisk) only count the first.
    expect(ours.leaks).toBe(1);
    expect(ours.issues.filter((issue) => issue.code === 'leak')).toHaveLength(1);
    const repaired = await vdiskCheck(path, 'leaks');
    expect(repaired.leaksFixed).toBe(1);
    expect(repaired.leaks).toBe(0);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('a data cluster whose refcount dropped to 0 (corruption + COPIED mismatch), repaired by -r all', async () => {
    const path = await damaged('zero-ref', async (image) => {
      await patch(image, (await refcountBlockOffset(image)) + (firstDataOffset / 65536) * 2, u16(0));
    });
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.corruptions).toBeGreaterThan(0);
    const repaired = await vdiskCheck(path, 'all');
    expect(repaired.corruptionsFixed).toBeGreaterThan(0);
    expect(repaired.corruptions).toBe(0);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('a data cluster with refcount 2 (leak + COPIED mismatch)', async () => {
    const path = await damaged('two-ref', async (image) => {
      await patch(image, (await refcountBlockOffset(image)) + (firstDataOffset / 65536) * 2, u16(2));
    });
    expectAgreement(await vdiskCheck(path), qemuCheck(path));
  });

  it('writes never land on metadata whose refcount was cleared (overlap guard)', async () => {
    const path = await damaged('overlap', async (image) => {
      const block = await refcountBlockOffset(image);
      // Clear the refcounts of the header, refcount table and L1 table clusters.
      for (const cluster of [0, 1, 3]) await patch(image, block + cluster * 2, u16(0));
    });
    const before = qemuCheck(path);
    const { openImage } = await import('../../src/engine/open.ts');
    const device = await openImage(path);
    // One cluster at a time: without the guard the first 'free' cluster would be the header itself.
    await device.write(2 << 20, new Uint8Array(60_000).fill(0x77));
    await device.write((2 << 20) + 65536, new Uint8Array(60_000).fill(0x77));
    await device.close();
    // The same damage is reported, nothing new: the header, table and L1 were not overwritten.
    expect(qemuCheck(path).corruptions).toBe(before.corruptions);
    const reread = await openImage(path, { readOnly: true });
    const data = new Uint8Array(60_000);
    await reread.read((2 << 20) + 65536, data);
    await reread.close();
    expect(data.every((byte) => byte === 0x77)).toBe(true);
  });

  /** Offset of the first L1 entry and of the first L2 entry that maps a data cluster. */
  async function firstEntries(path: string): Promise<{ l1Entry: number; l2Entry: number }> {
    const handle = await open(path, 'r');
    try {
      const header = Buffer.alloc(64);
      await handle.read(header, 0, 64, 0);
      const l1Entry = Number(header.readBigUInt64BE(40));
      const l1 = Buffer.alloc(8);
      await handle.read(l1, 0, 8, l1Entry);
      const l2Table = Number(l1.readBigUInt64BE(0) & 0x00fffffffffffe00n);
      const l2 = Buffer.alloc(65536);
      await handle.read(l2, 0, l2.length, l2Table);
      for (let index = 0; index < 8192; index++) {
        if ((l2.readBigUInt64BE(index * 8) & 0x00fffffffffffe00n) !== 0n)
          return { l1Entry, l2Entry: l2Table + index * 8 };
      }
      throw new Error('no data cluster in the first L2 table');
    } finally {
      await handle.close();
    }
  }

  /** Flips bit 63 (COPIED) of the 8-byte entry at `offsetBytes`. */
  async function flipCopied(path: string, offsetBytes: number): Promise<void> {
    const handle = await open(path, 'r+');
    const entry = Buffer.alloc(1);
    await handle.read(entry, 0, 1, offsetBytes);
    await handle.close();
    await patch(path, offsetBytes, Buffer.from([(entry[0] ?? 0) ^ 0x80]));
  }

  // Refcounts all right, one flag wrong: only the COPIED pass can see it.
  it('an L2 entry without COPIED although its refcount is 1, repaired by -r all', async () => {
    const path = await damaged('l2-copied', async (image) =>
      flipCopied(image, (await firstEntries(image)).l2Entry),
    );
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.corruptions).toBe(1);
    expect(ours.issues.map((issue) => issue.message).join()).toMatch(/OFLAG_COPIED data cluster/);
    expect((await vdiskCheck(path, 'all')).corruptions).toBe(0);
    expect(runStatus('qemu-img', ['check', path]).status).toBe(0);
  });

  it('an L1 entry without COPIED although its L2 table has refcount 1', async () => {
    const path = await damaged('l1-copied', async (image) =>
      flipCopied(image, (await firstEntries(image)).l1Entry),
    );
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.corruptions).toBe(1);
  });

  it('an L2 entry with COPIED set on a cluster a snapshot shares (refcount 2)', async () => {
    const path = join(dir, 'shared-copied.qcow2');
    await copyFile(pristine, path);
    run('qemu-img', ['snapshot', '-c', 'keep', path]);
    await flipCopied(path, (await firstEntries(path)).l2Entry);
    const ours = await vdiskCheck(path);
    expectAgreement(ours, qemuCheck(path));
    expect(ours.corruptions).toBeGreaterThan(0);
  });

  it('the refcount of the L1 table cluster cleared', async () => {
    const path = await damaged('l1-ref', async (image) => {
      await patch(image, (await refcountBlockOffset(image)) + 3 * 2, u16(0));
    });
    expectAgreement(await vdiskCheck(path), qemuCheck(path));
  });
});
