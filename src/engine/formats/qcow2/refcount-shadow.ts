// The refcounts an atomic metadata change (metadata-commit.ts) will have: each refcount block is copied
// the first time one of its counts changes, and the image's own blocks stay as they are until the header
// names the copies. qcow2.txt "Host cluster management".

import { CorruptImageError } from '../../errors.ts';
import { QCOW2_MAX_REFTABLE_BYTES } from './header.ts';
import { type RefcountManager, readRefcountEntry, writeRefcountEntry } from './refcount.ts';

export class RefcountShadow {
  readonly refcounts: RefcountManager;
  private readonly path: string;
  /** Refcount-table index -> the block's new contents (a copy of the image's block, or zeros where none is). */
  readonly changed = new Map<number, Buffer>();

  constructor(refcounts: RefcountManager, path: string) {
    this.refcounts = refcounts;
    this.path = path;
  }

  /** The new contents of block `tableIndex` if it changed, else the image's block (undefined: none). Read only. */
  async blockFor(tableIndex: number): Promise<Buffer | undefined> {
    return this.changed.get(tableIndex) ?? (await this.refcounts.blockAt(tableIndex));
  }

  /** The copy of block `tableIndex` that takes the changes, made on first use. */
  async writable(tableIndex: number): Promise<Buffer> {
    const done = this.changed.get(tableIndex);
    if (done) return done;
    if ((tableIndex + 1) * 8 > QCOW2_MAX_REFTABLE_BYTES) {
      // Only a cluster index far past any real file gets here (damaged metadata naming it).
      throw new CorruptImageError({
        file: this.path,
        offsetBytes: tableIndex * this.refcounts.entriesPerBlock * this.refcounts.clusterSizeBytes,
        message: `refcount table would grow past ${QCOW2_MAX_REFTABLE_BYTES} bytes (${tableIndex + 1} entries)`,
        fatal: true,
      });
    }
    const old = await this.refcounts.blockAt(tableIndex);
    const copy = old ? Buffer.from(old) : Buffer.alloc(this.refcounts.clusterSizeBytes);
    this.changed.set(tableIndex, copy);
    return copy;
  }

  /** New refcount of host cluster `clusterIndex`. */
  async get(clusterIndex: number): Promise<number> {
    const { entriesPerBlock, refcountOrder } = this.refcounts;
    const block = await this.blockFor(Math.floor(clusterIndex / entriesPerBlock));
    return block ? readRefcountEntry(block, clusterIndex % entriesPerBlock, refcountOrder) : 0;
  }

  /** Adds `delta` to the new refcount of one cluster; returns the new value. */
  async adjust(clusterIndex: number, delta: number): Promise<number> {
    await this.adjustRun(clusterIndex, 1, delta);
    return this.get(clusterIndex);
  }

  /**
   * Adds `delta` to the new refcounts of `clusterCount` clusters from `firstCluster`, one block lookup
   * per refcount block: snapshot walks hand over runs of contiguous data clusters. A count that would
   * leave the width's range throws CorruptImageError (fatal below zero: a reference that was never counted).
   */
  async adjustRun(firstCluster: number, clusterCount: number, delta: number): Promise<void> {
    const { entriesPerBlock, refcountOrder, maxRefcount } = this.refcounts;
    const endCluster = firstCluster + clusterCount;
    let clusterIndex = firstCluster;
    while (clusterIndex < endCluster) {
      const tableIndex = Math.floor(clusterIndex / entriesPerBlock);
      const block = await this.writable(tableIndex);
      const blockFirst = tableIndex * entriesPerBlock;
      const blockEnd = Math.min(endCluster, blockFirst + entriesPerBlock);
      // 16-bit refcounts (the default) through a DataView: the loop runs once per command, mostly
      // before V8 optimizes it, where Buffer's read/write calls cost several times more.
      const view =
        refcountOrder === 4 ? new DataView(block.buffer, block.byteOffset, block.length) : undefined;
      for (; clusterIndex < blockEnd; clusterIndex++) {
        const index = clusterIndex - blockFirst;
        const value =
          (view ? view.getUint16(index * 2) : readRefcountEntry(block, index, refcountOrder)) + delta;
        if (value < 0 || value > maxRefcount) {
          throw new CorruptImageError({
            file: this.path,
            offsetBytes: clusterIndex * this.refcounts.clusterSizeBytes,
            message: `refcount of cluster ${clusterIndex} would become ${value} (width ${2 ** refcountOrder} bits)`,
            fatal: value < 0,
          });
        }
        if (view) view.setUint16(index * 2, value);
        else writeRefcountEntry(block, index, refcountOrder, value);
      }
    }
  }
}
