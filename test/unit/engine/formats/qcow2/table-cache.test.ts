// The bounded metadata table cache: least-recently-used eviction preferring clean tables, dirty tables
// written only after the beforeWrite hook (flush order), adjacent dirty tables coalesced into one write.

import { describe, expect, it } from 'vitest';
import { TableCache } from '../../../../../src/engine/formats/qcow2/table-cache.ts';
import { MemoryFile } from './memory-file.ts';

describe('qcow2 table cache', () => {
  it('keeps at most its capacity and evicts the least recently used clean table first', async () => {
    const file = new MemoryFile('t', Buffer.alloc(8 * 512, 7));
    const cache = new TableCache({ file, tableBytes: 512, capacityTables: 3 });
    await cache.get(0);
    await cache.get(512);
    const dirty = await cache.get(1024);
    dirty[0] = 1;
    cache.markDirty(1024);
    await cache.get(0); // 0 is now most recent; 512 is the oldest clean table
    await cache.get(1536);
    expect(cache.size).toBe(3);
    expect(cache.peek(512)).toBeUndefined();
    expect(cache.peek(1024)?.[0]).toBe(1);
    expect(file.events.filter((event) => event.kind === 'write')).toHaveLength(0);
  });

  it('writes a dirty victim only after beforeWrite has run', async () => {
    const file = new MemoryFile('t', Buffer.alloc(4 * 512));
    const order: string[] = [];
    const cache = new TableCache({
      file,
      tableBytes: 512,
      capacityTables: 2,
      beforeWrite: async () => {
        order.push(`before@${file.events.length}`);
      },
    });
    (await cache.create(512))[5] = 9;
    (await cache.create(1024))[5] = 8;
    await cache.get(1536);
    expect(order).toEqual(['before@0']);
    expect(file.events).toEqual([{ kind: 'write', offsetBytes: 512, lengthBytes: 512 }]);
    expect(file.bytes[512 + 5]).toBe(9);
  });

  it('coalesces adjacent dirty tables into one write on flush', async () => {
    const file = new MemoryFile('t');
    const cache = new TableCache({ file, tableBytes: 512, capacityTables: 8 });
    await cache.create(2048);
    await cache.create(1024);
    await cache.create(1536);
    await cache.create(4096);
    await cache.flush();
    expect(file.events).toEqual([
      { kind: 'write', offsetBytes: 1024, lengthBytes: 1536 },
      { kind: 'write', offsetBytes: 4096, lengthBytes: 512 },
    ]);
    expect(cache.hasDirty()).toBe(false);
  });
});
