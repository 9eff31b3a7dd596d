// Chain-wide block status on a qcow2 overlay over a raw base, both made by vdisk: which layer
// answers (depth), present/zero/data, the zero tail past a shorter backing, -B's top-only view, and
// a concatenation of sources read back to back.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../src/engine/block-device.ts';
import { walkChain } from '../../../../src/engine/commands/chain-status.ts';
import { compareImages } from '../../../../src/engine/commands/compare.ts';
import { ConcatDevice } from '../../../../src/engine/commands/concat-device.ts';
import { createImage } from '../../../../src/engine/commands/create.ts';
import { mapImage } from '../../../../src/engine/commands/map.ts';
import { formatRegistry } from '../../../../src/engine/formats/registry.ts';
import { openImage } from '../../../../src/engine/open.ts';

const MiB = 1024 * 1024;
const HAS_QCOW2 = formatRegistry.some((driver) => driver.name === 'qcow2' && driver.create);
let folder: string;
let top: BlockDevice;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-chain-'));
  if (!HAS_QCOW2) return;
  await createImage({ path: join(folder, 'base.raw'), format: 'raw', sizeBytes: 2 * MiB, options: {} });
  const base = await openImage(join(folder, 'base.raw'), { format: 'raw' });
  await base.write(MiB, new Uint8Array(64 * 1024).fill(1));
  await base.close();
  await createImage({
    path: join(folder, 'top.qcow2'),
    format: 'qcow2',
    sizeBytes: 4 * MiB,
    options: {},
    backingFile: 'base.raw',
    backingFormat: 'raw',
  });
  const writable = await openImage(join(folder, 'top.qcow2'), { format: 'qcow2' });
  await writable.write(0, new Uint8Array(64 * 1024).fill(2));
  await writable.close();
  top = await openImage(join(folder, 'top.qcow2'), { readOnly: true });
});
afterAll(async () => {
  await top?.close();
  await rm(folder, { recursive: true, force: true });
});

describe.skipIf(!HAS_QCOW2)('chain status', () => {
  it('answers each range from the layer that holds it, with zeros past the shorter backing', async () => {
    const entries = [];
    for await (const entry of mapImage(top)) entries.push(entry);
    expect(entries[0]).toMatchObject({
      startBytes: 0,
      lengthBytes: 64 * 1024,
      depth: 0,
      present: true,
      data: true,
    });
    const baseData = entries.find((entry) => entry.startBytes === MiB);
    expect(baseData).toMatchObject({ depth: 1, present: true, data: true, zero: false, offsetBytes: MiB });
    expect(entries.at(-1)).toMatchObject({
      startBytes: 2 * MiB,
      lengthBytes: 2 * MiB,
      depth: 0,
      present: false,
      zero: true,
    });
    expect(entries.reduce((sum, entry) => sum + entry.lengthBytes, 0)).toBe(4 * MiB);
  });

  it('with topOnly leaves the backing to the caller (convert -B)', async () => {
    const kinds = [];
    for await (const extent of walkChain(top, 0, 2 * MiB, { topOnly: true }))
      kinds.push([extent.offsetBytes, extent.present, extent.zero]);
    expect(kinds[0]).toEqual([0, true, false]);
    expect(kinds.slice(1).every(([, present, zero]) => present === false && zero === false)).toBe(true);
  });

  it('reads a concatenation back to back and maps each part at its place', async () => {
    const base = await openImage(join(folder, 'base.raw'), { format: 'raw', readOnly: true });
    const again = await openImage(join(folder, 'top.qcow2'), { readOnly: true });
    const concat = new ConcatDevice([base, again]);
    expect(concat.sizeBytes).toBe(6 * MiB);
    const probe = new Uint8Array(4);
    await concat.read(MiB, probe);
    expect([...probe]).toEqual([1, 1, 1, 1]);
    await concat.read(2 * MiB, probe);
    expect([...probe]).toEqual([2, 2, 2, 2]);
    await concat.read(3 * MiB, probe);
    expect([...probe]).toEqual([1, 1, 1, 1]);
    const extents = await concat.blockStatus(2 * MiB, 64 * 1024);
    expect(extents[0]).toMatchObject({ offsetBytes: 2 * MiB, data: true, allocated: true });
    await expect(concat.write(0, probe)).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    expect(await compareImages(concat, concat)).toEqual({ kind: 'identical', sizeMismatch: false });
    await concat.close();
  });
});
