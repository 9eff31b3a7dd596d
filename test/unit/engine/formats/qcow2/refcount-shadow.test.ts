// The refcounts a metadata commit plans (refcount-shadow.ts): changes land in copies of the blocks, for
// every width, across block boundaries and where no block exists yet, while the image's blocks, cache
// and file stay as they were; counts leaving the width's range are refused with the cluster named.

import { describe, expect, it } from 'vitest';
import { RefcountManager, writeRefcountEntry } from '../../../../../src/engine/formats/qcow2/refcount.ts';
import { RefcountShadow } from '../../../../../src/engine/formats/qcow2/refcount-shadow.ts';
import { MemoryFile } from './memory-file.ts';

const CLUSTER_BITS = 9;
const CLUSTER_BYTES = 2 ** CLUSTER_BITS;

/** Header cluster 0, refcount table at 1 naming one block at 2; clusters 0-2 have refcount 1. */
function image(refcountOrder: number): { manager: RefcountManager; file: MemoryFile } {
  const file = new MemoryFile();
  const table = Buffer.alloc(CLUSTER_BYTES);
  table.writeBigUInt64BE(BigInt(2 * CLUSTER_BYTES), 0);
  const block = Buffer.alloc(CLUSTER_BYTES);
  for (let index = 0; index < 3; index++) writeRefcountEntry(block, index, refcountOrder, 1);
  void file.write(0, Buffer.alloc(CLUSTER_BYTES));
  void file.write(CLUSTER_BYTES, table);
  void file.write(2 * CLUSTER_BYTES, block);
  const manager = new RefcountManager({
    file,
    path: 'mem',
    clusterBits: CLUSTER_BITS,
    refcountOrder,
    tableOffsetBytes: CLUSTER_BYTES,
    table,
    writeTableLocation: async () => {},
  });
  return { manager, file };
}

describe('RefcountShadow', () => {
  for (let refcountOrder = 0; refcountOrder <= 6; refcountOrder++) {
    it(`plans ${2 ** refcountOrder}-bit refcounts in copies of the blocks`, async () => {
      const { manager, file } = image(refcountOrder);
      const before = Buffer.from(file.bytes);
      const shadow = new RefcountShadow(manager, 'mem');
      const perBlock = manager.entriesPerBlock;
      // A run from the first block into the second, which the table does not name yet.
      await shadow.adjustRun(perBlock - 2, 4, 1);
      await shadow.adjust(2, -1);
      expect(await shadow.get(perBlock - 3)).toBe(0);
      for (let cluster = perBlock - 2; cluster < perBlock + 2; cluster++)
        expect(await shadow.get(cluster)).toBe(1);
      expect(await shadow.get(2)).toBe(0);
      expect(await shadow.get(1)).toBe(1);
      expect([...shadow.changed.keys()].sort()).toEqual([0, 1]);
      // The image itself still says what the file says.
      expect(await manager.get(2)).toBe(1);
      expect(await manager.get(perBlock - 1)).toBe(0);
      expect(manager.blockOffset(1)).toBe(0);
      expect(manager.blocks.hasDirty()).toBe(false);
      expect(file.bytes.equals(before)).toBe(true);
    });
  }

  it('refuses a count past the width (not fatal) and below zero (fatal), naming the cluster', async () => {
    const { manager } = image(1);
    const shadow = new RefcountShadow(manager, 'mem');
    await shadow.adjustRun(0, 1, 2);
    await expect(shadow.adjust(0, 1)).rejects.toMatchObject({
      code: 'VDISK_ECORRUPT',
      fatal: false,
      offsetBytes: 0,
      message: expect.stringContaining('refcount of cluster 0 would become 4 (width 2 bits)'),
    });
    await expect(shadow.adjustRun(5, 1, -1)).rejects.toMatchObject({
      code: 'VDISK_ECORRUPT',
      fatal: true,
      offsetBytes: 5 * CLUSTER_BYTES,
    });
  });
});
