// Refcount entries of every width (1..64 bits), allocation of contiguous runs and of compressed bytes,
// freeing, and refcount-table growth; each checked against a recount of what the file says.

import { describe, expect, it } from 'vitest';
import {
  maxRefcount,
  RefcountManager,
  readRefcountEntry,
  tableEntryOffset,
  writeRefcountEntry,
} from '../../../../../src/engine/formats/qcow2/refcount.ts';
import { MemoryFile } from './memory-file.ts';

/** A manager over a fresh in-memory layout: header cluster 0, table at 1, first block at 2. */
function freshManager(
  clusterBits: number,
  refcountOrder: number,
): { manager: RefcountManager; file: MemoryFile; header: { offset: number; clusters: number } } {
  const clusterSizeBytes = 2 ** clusterBits;
  const file = new MemoryFile();
  const table = Buffer.alloc(clusterSizeBytes);
  table.writeBigUInt64BE(BigInt(2 * clusterSizeBytes), 0);
  const block = Buffer.alloc(clusterSizeBytes);
  for (let index = 0; index < 3; index++) writeRefcountEntry(block, index, refcountOrder, 1);
  void file.write(0, Buffer.alloc(clusterSizeBytes));
  void file.write(clusterSizeBytes, table);
  void file.write(2 * clusterSizeBytes, block);
  const header = { offset: clusterSizeBytes, clusters: 1 };
  const manager = new RefcountManager({
    file,
    path: 'mem',
    clusterBits,
    refcountOrder,
    tableOffsetBytes: clusterSizeBytes,
    table: Buffer.from(table),
    cacheBytes: 4 * clusterSizeBytes,
    writeTableLocation: async (offsetBytes, clusterCount) => {
      header.offset = offsetBytes;
      header.clusters = clusterCount;
    },
  });
  return { manager, file, header };
}

/** Reads the refcount of `clusterIndex` straight from the file bytes (no cache). */
function onDisk(
  file: MemoryFile,
  header: { offset: number; clusters: number },
  clusterBits: number,
  refcountOrder: number,
  clusterIndex: number,
): number {
  const clusterSizeBytes = 2 ** clusterBits;
  const perBlock = (clusterSizeBytes * 8) / 2 ** refcountOrder;
  const tableIndex = Math.floor(clusterIndex / perBlock);
  if (tableIndex >= (header.clusters * clusterSizeBytes) / 8) return 0;
  const blockOffset = tableEntryOffset(
    file.bytes.subarray(header.offset, header.offset + header.clusters * clusterSizeBytes),
    tableIndex,
  );
  if (blockOffset === 0) return 0;
  return readRefcountEntry(
    file.bytes.subarray(blockOffset, blockOffset + clusterSizeBytes),
    clusterIndex % perBlock,
    refcountOrder,
  );
}

describe('qcow2 refcounts', () => {
  for (let order = 0; order <= 6; order++) {
    it(`reads and writes ${2 ** order}-bit entries without touching neighbours`, () => {
      const block = Buffer.alloc(64);
      const entries = (64 * 8) / 2 ** order;
      const max = maxRefcount(order);
      for (let index = 0; index < entries; index++)
        writeRefcountEntry(block, index, order, index % 3 === 0 ? max : index % (max + 1));
      for (let index = 0; index < entries; index++)
        expect(readRefcountEntry(block, index, order)).toBe(index % 3 === 0 ? max : index % (max + 1));
      writeRefcountEntry(block, 1, order, 0);
      expect(readRefcountEntry(block, 0, order)).toBe(max);
      expect(readRefcountEntry(block, 2, order)).toBe(2 % (max + 1));
    });
  }

  it('stores sub-byte refcounts least significant bits first, as qemu does', () => {
    const block = Buffer.alloc(1);
    writeRefcountEntry(block, 0, 0, 1);
    expect(block[0]).toBe(0b0000_0001);
    writeRefcountEntry(block, 3, 1, 2);
    expect(block[0]).toBe(0b1000_0001);
  });

  it('allocates contiguous runs after the used clusters and frees them', async () => {
    const { manager, file, header } = freshManager(12, 4);
    expect(await manager.allocateClusters(5)).toBe(3);
    expect(await manager.allocateClusters(2)).toBe(8);
    await manager.free(4, 2);
    expect(await manager.allocateClusters(2)).toBe(4);
    expect(await manager.allocateClusters(3)).toBe(10);
    await manager.flush();
    for (const [clusterIndex, expected] of [
      [3, 1],
      [4, 1],
      [6, 1],
      [7, 1],
      [9, 1],
      [12, 1],
      [13, 0],
    ] as const) {
      expect(onDisk(file, header, 12, 4, clusterIndex)).toBe(expected);
    }
  });

  it('packs compressed bytes into shared clusters and spills into the next one', async () => {
    const { manager } = freshManager(12, 4);
    const first = await manager.allocateBytes(1000);
    const second = await manager.allocateBytes(3000);
    expect(second).toBe(first + 1000);
    expect(await manager.get(first / 4096)).toBe(2);
    const third = await manager.allocateBytes(500);
    // 4000 bytes used: 96 left, so the next 500 start there and spill into the following cluster.
    expect(third).toBe(first + 4000);
    expect(await manager.get(first / 4096)).toBe(3);
    expect(await manager.get(first / 4096 + 1)).toBe(1);
  });

  it('never shares a cluster past the refcount width (1-bit refcounts)', async () => {
    const { manager } = freshManager(12, 0);
    const first = await manager.allocateBytes(100);
    const second = await manager.allocateBytes(100);
    expect(Math.floor(second / 4096)).not.toBe(Math.floor(first / 4096));
  });

  it('allocates refcount blocks and grows the table, leaving every structure accounted for', async () => {
    // 512-byte clusters, 64-bit refcounts: 64 clusters per block, 64 blocks per table cluster.
    const { manager, file, header } = freshManager(9, 6);
    const runs: number[] = [];
    for (let run = 0; run < 120; run++) runs.push(await manager.allocateClusters(50));
    await manager.flush();
    expect(header.clusters).toBeGreaterThan(1);
    expect(header.offset).not.toBe(512);
    // Recount: every allocated run, the header, every block and the table clusters have refcount 1.
    const used = new Map<number, number>();
    const mark = (clusterIndex: number): void =>
      void used.set(clusterIndex, (used.get(clusterIndex) ?? 0) + 1);
    mark(0);
    for (const start of runs) for (let index = 0; index < 50; index++) mark(start + index);
    for (let index = 0; index < header.clusters; index++) mark(header.offset / 512 + index);
    const table = file.bytes.subarray(header.offset, header.offset + header.clusters * 512);
    for (let tableIndex = 0; tableIndex < table.length / 8; tableIndex++) {
      const blockOffset = tableEntryOffset(table, tableIndex);
      if (blockOffset !== 0) mark(blockOffset / 512);
    }
    const end = Math.ceil(file.bytes.length / 512);
    for (let clusterIndex = 0; clusterIndex < end; clusterIndex++) {
      expect([clusterIndex, onDisk(file, header, 9, 6, clusterIndex)]).toEqual([
        clusterIndex,
        used.get(clusterIndex) ?? 0,
      ]);
    }
  });
});

describe('allocatedTableIndexes', () => {
  it('lists exactly the entries that name a block, across zero runs and a partial last run', () => {
    const clusterSizeBytes = 4096;
    // 1.5 clusters of table: the last 512-byte scan step is cut short.
    const table = Buffer.alloc(clusterSizeBytes + 2048);
    const named = [0, 63, 64, 127, 300, 511, table.length / 8 - 1];
    for (const index of named) table.writeBigUInt64BE(BigInt((index + 10) * clusterSizeBytes), index * 8);
    // Reserved bits alone (the low 9) name no block: tableEntryOffset masks them to 0.
    table.writeUInt32BE(0x1ff, 200 * 8 + 4);
    const manager = new RefcountManager({
      file: new MemoryFile(),
      path: 'mem',
      clusterBits: 12,
      refcountOrder: 4,
      tableOffsetBytes: clusterSizeBytes,
      table,
      writeTableLocation: async () => undefined,
    });
    const every = Array.from({ length: table.length / 8 }, (_, index) => index).filter(
      (index) => manager.blockOffset(index) !== 0,
    );
    expect(every).toEqual(named);
    expect(manager.allocatedTableIndexes()).toEqual(every);
  });
});
