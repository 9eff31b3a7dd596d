// vdisk's qcow2 blockStatus describes a layer as `qemu-img map --output=json` does for a single image:
// data clusters with their host offsets, zero clusters (with the host offset of a preallocated one),
// compressed clusters without an offset, unallocated ranges. Checked on images qemu made.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Extent } from '../../src/engine/block-device.ts';
import { openImage } from '../../src/engine/open.ts';
import { has, run, scratchDir, writeSeededRaw } from '../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED map-qcow2.test.ts: qemu-img/qemu-io not found (apt-get install qemu-utils)');

interface MapEntry {
  start: number;
  length: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** qemu-img map's view of one image (no backing), from vdisk's extents, merged as qemu merges them. */
function asQemuMap(extents: Extent[]): MapEntry[] {
  const entries: MapEntry[] = [];
  for (const extent of extents) {
    const entry: MapEntry = {
      start: extent.offsetBytes,
      length: extent.lengthBytes,
      present: extent.allocated,
      zero: extent.zero,
      data: extent.data,
    };
    if (extent.hostOffsetBytes !== undefined) entry.offset = extent.hostOffsetBytes;
    const previous = entries[entries.length - 1];
    const contiguous =
      previous &&
      previous.present === entry.present &&
      previous.zero === entry.zero &&
      previous.data === entry.data &&
      (previous.offset === undefined
        ? entry.offset === undefined
        : entry.offset === previous.offset + previous.length);
    if (previous && contiguous) previous.length += entry.length;
    else entries.push(entry);
  }
  return entries;
}

function qemuMap(path: string): MapEntry[] {
  const entries = JSON.parse(run('qemu-img', ['map', '--output=json', path])) as Array<
    MapEntry & { depth: number }
  >;
  return entries.map(({ depth: _depth, ...entry }) => entry);
}

describe.skipIf(!HAS_QEMU)('qcow2 block status matches qemu-img map', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let raw: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    raw = await writeSeededRaw(dir, 'seed.raw', 6 << 20, 11);
  });
  afterAll(async () => cleanup());

  async function expectSameMap(path: string): Promise<void> {
    const device = await openImage(path, { readOnly: true, noBacking: true });
    const extents: Extent[] = [];
    for (let at = 0; at < device.sizeBytes; ) {
      const batch = await device.blockStatus(at, device.sizeBytes - at);
      extents.push(...batch);
      const last = batch[batch.length - 1];
      if (!last) break;
      at = last.offsetBytes + last.lengthBytes;
    }
    await device.close();
    expect(asQemuMap(extents)).toEqual(qemuMap(path));
  }

  it('converted data with zero runs, zero clusters with and without a host cluster', async () => {
    const path = join(dir, 'mixed.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, path]);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -z 1048576 65536',
      '-c',
      'write -z -u 2097152 8192',
      '-c',
      'write -P 3 5000000 100000',
      path,
    ]);
    await expectSameMap(path);
  });

  it('compressed clusters', async () => {
    const path = join(dir, 'compressed.qcow2');
    run('qemu-img', ['convert', '-c', '-O', 'qcow2', raw, path]);
    await expectSameMap(path);
  });

  it('extended L2 entries: subclusters with data, zeros and nothing', async () => {
    const path = join(dir, 'extended.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', path, '4M']);
    run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 1 4096 4096',
      '-c',
      'write -P 2 100000 50000',
      '-c',
      'write -z 200000 10000',
      '-c',
      'write -z 524288 131072',
      path,
    ]);
    await expectSameMap(path);
  });

  it('an overlay over a backing file (this layer only)', async () => {
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', raw, base]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 5 65536 131072', '-c', 'write -z 3145728 65536', top]);
    const device = await openImage(top, { readOnly: true });
    const extents = await device.blockStatus(0, device.sizeBytes);
    await device.close();
    expect(
      extents
        .filter((extent) => extent.allocated)
        .map((extent) => [extent.offsetBytes, extent.lengthBytes, extent.zero]),
    ).toEqual([
      [65536, 131072, false],
      [3145728, 65536, true],
    ]);
    expect(extents.filter((extent) => !extent.allocated).every((extent) => !extent.data)).toBe(true);
  });
});
