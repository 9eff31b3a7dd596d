// Test helper: a HostFile held in memory (growable buffer), with a log of writes and syncs so tests can
// assert I/O order (refcount blocks before L2 tables) without touching the disk.

import type { HostFile } from '../../../../../src/engine/io/host-file.ts';

export type IoEvent = { kind: 'write'; offsetBytes: number; lengthBytes: number } | { kind: 'sync' };

export class MemoryFile implements HostFile {
  readonly path: string;
  readonly isReadOnly: boolean;
  bytes: Buffer;
  readonly events: IoEvent[] = [];

  constructor(path = 'memory.qcow2', initial: Uint8Array = new Uint8Array(0), isReadOnly = false) {
    this.path = path;
    this.isReadOnly = isReadOnly;
    this.bytes = Buffer.from(initial);
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<number> {
    if (offsetBytes >= this.bytes.length) return 0;
    const count = Math.min(buffer.length, this.bytes.length - offsetBytes);
    buffer.set(this.bytes.subarray(offsetBytes, offsetBytes + count));
    return count;
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    const end = offsetBytes + data.length;
    if (end > this.bytes.length) {
      const grown = Buffer.alloc(end);
      this.bytes.copy(grown);
      this.bytes = grown;
    }
    this.bytes.set(data, offsetBytes);
    this.events.push({ kind: 'write', offsetBytes, lengthBytes: data.length });
  }

  async sizeBytes(): Promise<number> {
    return this.bytes.length;
  }

  async truncate(sizeBytes: number): Promise<void> {
    const resized = Buffer.alloc(sizeBytes);
    this.bytes.copy(resized, 0, 0, Math.min(sizeBytes, this.bytes.length));
    this.bytes = resized;
  }

  async sync(): Promise<void> {
    this.events.push({ kind: 'sync' });
  }

  async close(): Promise<void> {}
}
