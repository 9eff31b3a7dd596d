// A HostFile that simulates a crash (power cut) after the N-th write: the first `writesBeforeCut` writes
// reach the real file, later writes, truncates and syncs silently do nothing, as if the machine had
// stopped. Used by the crash-consistency sweeps, which cut at every N and check the file with qemu-img.
// Optional extras (punch, seek, writeback) are deliberately not forwarded, so nothing bypasses the cut.

import type { HostFile } from '../../src/engine/io/host-file.ts';

export class CuttingFile implements HostFile {
  readonly inner: HostFile;
  readonly writesBeforeCut: number;
  /** Writes persisted so far (stops growing at the cut). */
  writeCount = 0;

  constructor(inner: HostFile, writesBeforeCut: number) {
    this.inner = inner;
    this.writesBeforeCut = writesBeforeCut;
  }
  get path(): string {
    return this.inner.path;
  }
  get isReadOnly(): boolean {
    return this.inner.isReadOnly;
  }
  /** True once the cut happened: nothing written from now on persists. */
  get isCut(): boolean {
    return this.writeCount >= this.writesBeforeCut;
  }
  read(offsetBytes: number, buffer: Uint8Array): Promise<number> {
    return this.inner.read(offsetBytes, buffer);
  }
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (this.isCut) return;
    this.writeCount++;
    await this.inner.write(offsetBytes, data);
  }
  sizeBytes(): Promise<number> {
    return this.inner.sizeBytes();
  }
  async truncate(sizeBytes: number): Promise<void> {
    if (!this.isCut) await this.inner.truncate(sizeBytes);
  }
  async sync(): Promise<void> {
    if (!this.isCut) await this.inner.sync();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
