// The engine side of snapshot, rebase, commit and amend on images vdisk makes itself, no qemu needed:
// each keeps (or, for snapshot -a, restores) the guest content read back through openImage, and the
// error codes callers match on (VDISK_EINVAL for a missing snapshot, base or -F).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { amendImage } from '../../../../src/engine/commands/amend.ts';
import { commitImage } from '../../../../src/engine/commands/commit.ts';
import { createImage } from '../../../../src/engine/commands/create.ts';
import { rebaseImage } from '../../../../src/engine/commands/rebase.ts';
import { snapshotImage } from '../../../../src/engine/commands/snapshot.ts';
import { openImage } from '../../../../src/engine/open.ts';

const MiB = 1024 * 1024;
let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-chain-commands-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

async function content(path: string): Promise<Buffer> {
  const device = await openImage(path, { readOnly: true });
  try {
    const bytes = Buffer.alloc(device.sizeBytes);
    await device.read(0, bytes);
    return bytes;
  } finally {
    await device.close();
  }
}

async function write(path: string, offsetBytes: number, lengthBytes: number, value: number): Promise<void> {
  const device = await openImage(path);
  try {
    await device.write(offsetBytes, Buffer.alloc(lengthBytes, value));
  } finally {
    await device.close();
  }
}

/** base.raw (0x11 in the first 2 MiB) <- top.qcow2 (0x22 at 1 MiB..1.5 MiB). */
async function chain(name: string): Promise<{ base: string; top: string }> {
  const base = join(folder, `${name}-base.raw`);
  const top = join(folder, `${name}-top.qcow2`);
  await createImage({ path: base, format: 'raw', sizeBytes: 4 * MiB, options: {} });
  await write(base, 0, 2 * MiB, 0x11);
  await createImage({
    path: top,
    format: 'qcow2',
    options: {},
    backingFile: `${name}-base.raw`,
    backingFormat: 'raw',
  });
  await write(top, MiB, MiB / 2, 0x22);
  return { base, top };
}

describe('chain commands on vdisk-made images', () => {
  it('snapshot create, apply and delete restore and keep the content', async () => {
    const { top } = await chain('snap');
    const before = await content(top);
    const table = await snapshotImage({ path: top, action: { kind: 'create', name: 'a' } });
    expect(table.map((entry) => [entry.id, entry.name, entry.icount])).toEqual([['1', 'a', 0]]);
    await write(top, 0, 3 * MiB, 0x33);
    expect((await content(top)).equals(before)).toBe(false);
    await snapshotImage({ path: top, action: { kind: 'apply', name: 'a' } });
    expect((await content(top)).equals(before)).toBe(true);
    await expect(snapshotImage({ path: top, action: { kind: 'delete', name: '1' } })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
    });
    expect(await snapshotImage({ path: top, action: { kind: 'delete', name: 'a' } })).toEqual([]);
  });

  it('rebase (safe) onto nothing flattens; -u renames without copying', async () => {
    const { top } = await chain('rebase');
    const before = await content(top);
    await expect(rebaseImage({ path: top, backing: 'other.raw', unsafe: true })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
      option: 'backing_fmt',
    });
    await rebaseImage({ path: top, backing: '', unsafe: false });
    expect((await content(top)).equals(before)).toBe(true);
    const device = await openImage(top, { readOnly: true });
    expect((await device.info()).backingFilename).toBeUndefined();
    await device.close();
    await rebaseImage({ path: top, backing: 'rebase-base.raw', backingFormat: 'raw', unsafe: true });
    expect((await content(top)).equals(before)).toBe(true);
  });

  it('commit moves the data into the base and empties the top', async () => {
    const { base, top } = await chain('commit');
    const before = await content(top);
    await expect(
      commitImage({ path: top, base: join(folder, 'nope.raw'), drop: false }),
    ).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
    });
    await commitImage({ path: top, drop: false });
    expect((await content(base)).equals(before)).toBe(true);
    expect((await content(top)).equals(before)).toBe(true);
    const device = await openImage(top, { readOnly: true, noBacking: true });
    expect((await device.blockStatus(0, device.sizeBytes)).every((extent) => !extent.allocated)).toBe(true);
    await device.close();
  });

  it('amend compat and refcount_bits keep the content', async () => {
    const { top } = await chain('amend');
    await write(top, 3 * MiB, 64 * 1024, 0);
    const before = await content(top);
    await amendImage({ path: top, options: { refcount_bits: '4' } });
    await amendImage({ path: top, options: { compat: '0.10', refcount_bits: '16' } });
    const device = await openImage(top, { readOnly: true });
    expect((await device.info()).formatSpecific?.data).toMatchObject({ compat: '0.10', 'refcount-bits': 16 });
    await device.close();
    expect((await content(top)).equals(before)).toBe(true);
    await expect(amendImage({ path: top, options: {} })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
  });
});
