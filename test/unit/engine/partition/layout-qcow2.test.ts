// A layout written in-process into a qcow2 image (as the attach agent does before serving it):
// qemu-img checks the image clean, sfdisk reads the table from qemu-img's raw copy, and the wiped
// partition heads are zero clusters, not allocated data.

import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../../../src/engine/open.ts';
import { formatRegistry } from '../../../../src/engine/formats/registry.ts';
import { applyLayout } from '../../../../src/engine/partition/index.ts';
import { has, scratchDir, sfdiskJson } from './helpers.ts';

const MiB = 1024 * 1024;
const ready = has('qemu-img') && has('sfdisk') && formatRegistry.some((driver) => driver.name === 'qcow2');
if (!ready) console.warn('SKIPPING layout-in-qcow2: qemu-img, sfdisk or the qcow2 driver is missing');

describe.skipIf(!ready)('applyLayout on a qcow2 image', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('writes a GPT that qemu-img checks clean and sfdisk reads, allocating only the table clusters', async () => {
    const image = `${dir}/disk.qcow2`;
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(64 * MiB)]);
    const device = await openImage(image);
    const table = await applyLayout(
      device,
      { table: 'gpt', partitions: [{ sizeBytes: 16 * MiB, label: 'a' }, { label: 'b' }] },
      image,
    );
    await device.close();
    execFileSync('qemu-img', ['check', '-q', image]);
    const raw = `${dir}/disk.raw`;
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
    expect(sfdiskJson(raw).partitions.map((p) => [p.start, p.size, p.name])).toEqual(
      table.partitions.map((p) => [p.startSector, p.sectorCount, p.name]),
    );
    const map = JSON.parse(
      execFileSync('qemu-img', ['map', '--output=json', image], { encoding: 'utf8' }),
    ) as Array<{ length: number; data: boolean }>;
    const dataBytes = map.filter((extent) => extent.data).reduce((sum, extent) => sum + extent.length, 0);
    // Cluster 0 (protective MBR, primary GPT) and the last cluster (backup GPT); 64 KiB clusters.
    expect(dataBytes).toBeLessThanOrEqual(2 * 64 * 1024);
  });
});
