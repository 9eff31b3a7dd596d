// The order in which the qcow2 driver puts metadata on disk, read from an in-memory file's I/O log:
// data and refcount blocks, then a sync, then L2 tables, then a sync, then L1 entries; freed clusters are
// released only after the tables that stopped naming them are durable.

import { describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../../../src/engine/formats/qcow2/driver.ts';
import { type IoEvent, MemoryFile } from './memory-file.ts';

async function freshDevice(
  options: Record<string, string> = {},
): Promise<{ file: MemoryFile; open: () => ReturnType<typeof qcow2Driver.open> }> {
  const file = new MemoryFile('order.qcow2');
  await qcow2Driver.create?.({
    path: 'order.qcow2',
    file,
    sizeBytes: 64 << 20,
    options,
    openBacking: undefined,
  });
  file.events.length = 0;
  return {
    file,
    open: () =>
      qcow2Driver.open({ path: 'order.qcow2', file, readOnly: false, openBacking: undefined, options: {} }),
  };
}

/** Index of the first write overlapping [offset, offset+length) at or after `from`. */
function writeIndex(events: IoEvent[], offsetBytes: number, lengthBytes: number, from = 0): number {
  return events.findIndex(
    (event, index) =>
      index >= from &&
      event.kind === 'write' &&
      event.offsetBytes < offsetBytes + lengthBytes &&
      offsetBytes < event.offsetBytes + event.lengthBytes,
  );
}

function syncBetween(events: IoEvent[], first: number, second: number): boolean {
  return events.slice(first + 1, second).some((event) => event.kind === 'sync');
}

describe('qcow2 metadata write order', () => {
  it('writes data and refcounts, syncs, writes the L2 table, syncs, then the L1 entry', async () => {
    const { file, open } = await freshDevice();
    const device = await open();
    await device.write(10 << 20, new Uint8Array(200_000).fill(1));
    const l1Offset = Number(file.bytes.readBigUInt64BE(40));
    await device.flush();
    const events = file.events;
    // New L2 table at cluster 4, data at clusters 5..8 (qemu's order), refcount block at cluster 2.
    const data = writeIndex(events, 5 * 65536, 65536);
    const refcountBlock = writeIndex(events, 2 * 65536, 65536);
    const l2 = writeIndex(events, 4 * 65536, 65536);
    const l1 = writeIndex(events, l1Offset, 8);
    expect([data, refcountBlock, l2, l1].every((index) => index >= 0)).toBe(true);
    expect(data).toBeLessThan(l2);
    expect(refcountBlock).toBeLessThan(l2);
    expect(syncBetween(events, Math.max(data, refcountBlock), l2)).toBe(true);
    expect(l2).toBeLessThan(l1);
    expect(syncBetween(events, l2, l1)).toBe(true);
    expect(events[events.length - 1]).toEqual({ kind: 'sync' });
    await device.close();
  });

  it('drops a discarded cluster from its refcount only after the L2 table no longer names it', async () => {
    const { file, open } = await freshDevice();
    const device = await open();
    await device.write(0, new Uint8Array(65536).fill(1));
    await device.flush();
    file.events.length = 0;
    await device.discard(0, 65536);
    expect(file.events.filter((event) => event.kind === 'write')).toHaveLength(0);
    await device.flush();
    const events = file.events;
    const l2 = writeIndex(events, 4 * 65536, 65536);
    const refcountBlock = writeIndex(events, 2 * 65536, 65536);
    expect(l2).toBeGreaterThanOrEqual(0);
    expect(refcountBlock).toBeGreaterThan(l2);
    expect(syncBetween(events, l2, refcountBlock)).toBe(true);
    await device.close();
  });

  it('a fua write is durable before it returns', async () => {
    const { file, open } = await freshDevice();
    const device = await open();
    await device.write(0, new Uint8Array(4096).fill(1), { fua: true });
    expect(file.events[file.events.length - 1]).toEqual({ kind: 'sync' });
    expect(writeIndex(file.events, Number(file.bytes.readBigUInt64BE(40)), 8)).toBeGreaterThanOrEqual(0);
    await device.close();
  });
});
