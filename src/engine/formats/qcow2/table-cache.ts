// Bounded write-back cache of cluster-sized metadata tables (L2 tables, refcount blocks), as qemu's
// qcow2-cache.c: least-recently-used eviction, dirty tracking, and a `beforeWrite` hook that lets the
// owner enforce flush order (refcount blocks reach the disk before the L2 tables that depend on them).

import type { HostFile } from '../../io/host-file.ts';

export interface TableCacheOptions {
  file: HostFile;
  tableBytes: number;
  /** Most tables kept in memory (at least 2). */
  capacityTables: number;
  /** Runs before any dirty table is written (eviction or flush): write and sync what must come first. */
  beforeWrite?: () => Promise<void>;
}

interface Entry {
  table: Buffer;
  dirty: boolean;
}

export class TableCache {
  private readonly entries = new Map<number, Entry>();
  private readonly options: TableCacheOptions;
  /** Tables written out by this cache (for tests and benchmarks). */
  writeCount = 0;
  /** The most recently used entry (the last in `entries`' order), for peek's fast path. */
  private lastOffsetBytes = -1;
  private lastEntry: Entry | undefined;

  constructor(options: TableCacheOptions) {
    this.options = { ...options, capacityTables: Math.max(2, options.capacityTables) };
  }

  get size(): number {
    return this.entries.size;
  }

  get capacityTables(): number {
    return this.options.capacityTables;
  }

  /** Whether a table at `offsetBytes` is cached (no recency update). */
  peekQuiet(offsetBytes: number): boolean {
    return this.entries.has(offsetBytes);
  }

  /** The cached table at `offsetBytes` without touching the file, or undefined. */
  peek(offsetBytes: number): Buffer | undefined {
    // Sequential I/O asks for the same table thousands of times in a row: it is already the most
    // recently used, so skip the Map re-insertion that keeps the LRU order.
    if (offsetBytes === this.lastOffsetBytes && this.lastEntry) return this.lastEntry.table;
    const entry = this.entries.get(offsetBytes);
    if (!entry) return undefined;
    this.entries.delete(offsetBytes);
    this.entries.set(offsetBytes, entry);
    this.lastOffsetBytes = offsetBytes;
    this.lastEntry = entry;
    return entry.table;
  }

  /** The table at `offsetBytes`, read from the file on a miss (bytes past EOF read as zeros). */
  async get(offsetBytes: number): Promise<Buffer> {
    const cached = this.peek(offsetBytes);
    if (cached) return cached;
    const table = Buffer.alloc(this.options.tableBytes);
    await this.options.file.read(offsetBytes, table);
    const raced = this.entries.get(offsetBytes);
    if (raced) return raced.table;
    await this.insert(offsetBytes, { table, dirty: false });
    return table;
  }

  /** Installs a fresh zero-filled (or given) table at `offsetBytes`, dirty. */
  async create(offsetBytes: number, contents?: Buffer): Promise<Buffer> {
    const table = Buffer.alloc(this.options.tableBytes);
    if (contents) contents.copy(table);
    this.forget(offsetBytes);
    await this.insert(offsetBytes, { table, dirty: true });
    return table;
  }

  markDirty(offsetBytes: number): void {
    const entry = this.entries.get(offsetBytes);
    if (entry) entry.dirty = true;
  }

  isDirty(offsetBytes: number): boolean {
    return this.entries.get(offsetBytes)?.dirty ?? false;
  }

  hasDirty(): boolean {
    for (const entry of this.entries.values()) if (entry.dirty) return true;
    return false;
  }

  /** Forgets every table without writing any (the metadata they came from was replaced; none is dirty). */
  clear(): void {
    this.entries.clear();
    this.lastEntry = undefined;
    this.lastOffsetBytes = -1;
  }

  /** Forgets a table without writing it (its cluster was freed). */
  drop(offsetBytes: number): void {
    this.forget(offsetBytes);
  }

  private forget(offsetBytes: number): void {
    this.entries.delete(offsetBytes);
    if (offsetBytes === this.lastOffsetBytes) this.lastEntry = undefined;
  }

  private async insert(offsetBytes: number, entry: Entry): Promise<void> {
    while (this.entries.size >= this.options.capacityTables) {
      const victim = this.pickVictim();
      if (victim === undefined) break;
      const old = this.entries.get(victim);
      if (old?.dirty) await this.writeOut([victim]);
      this.forget(victim);
    }
    this.entries.set(offsetBytes, entry);
    this.lastOffsetBytes = offsetBytes;
    this.lastEntry = entry;
  }

  private pickVictim(): number | undefined {
    // Map order is least recently used first; prefer a clean table to avoid a write.
    let firstDirty: number | undefined;
    for (const [offsetBytes, entry] of this.entries) {
      if (!entry.dirty) return offsetBytes;
      firstDirty ??= offsetBytes;
    }
    return firstDirty;
  }

  private async writeOut(offsets: number[]): Promise<void> {
    if (offsets.length === 0) return;
    if (this.options.beforeWrite) await this.options.beforeWrite();
    offsets.sort((a, b) => a - b);
    // Coalesce tables at adjacent offsets into one write.
    let runStart = 0;
    while (runStart < offsets.length) {
      let runEnd = runStart + 1;
      while (
        runEnd < offsets.length &&
        offsets[runEnd] === (offsets[runEnd - 1] ?? 0) + this.options.tableBytes
      )
        runEnd++;
      const buffers: Buffer[] = [];
      for (let index = runStart; index < runEnd; index++) {
        const entry = this.entries.get(offsets[index] ?? -1);
        if (entry) {
          buffers.push(entry.table);
          entry.dirty = false;
        }
      }
      const first = offsets[runStart] ?? 0;
      await this.options.file.write(
        first,
        buffers.length === 1 ? (buffers[0] as Buffer) : Buffer.concat(buffers),
      );
      this.writeCount += buffers.length;
      runStart = runEnd;
    }
  }

  /** Writes every dirty table (after `beforeWrite`); does not sync. */
  async flush(): Promise<void> {
    const dirty: number[] = [];
    for (const [offsetBytes, entry] of this.entries) if (entry.dirty) dirty.push(offsetBytes);
    await this.writeOut(dirty);
  }
}
