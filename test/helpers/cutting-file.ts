// A HostFile that simulates a crash (power cut) after the N-th write: the first `writesBeforeCut` writes
// reach the real file, later writes, truncates and syncs silently do nothing, as if the machine had
// stopped. Used by the crash-consistency sweeps, which cut at every N and check the file with qemu-img.
// Optional extras (punch, seek, writeback) are deliberately not forwarded, so nothing bypasses the cut.

import type { BlockDevice } from '../../src/engine/block-device.ts';
import { type HostFile, NodeHostFile } from '../../src/engine/io/host-file.ts';
import { type OpenImageOptions, openImage } from '../../src/engine/open.ts';

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

/** An image opened so that its writable files go through one CuttingFile cut after `cut` writes. */
export interface CutOpen {
  device: BlockDevice;
  /** The CuttingFile of the writable file (undefined until the open made one). */
  cutting: () => CuttingFile | undefined;
}

/** Opens `path` with every writable file wrapped in a CuttingFile (read-only backing files are not). */
export async function openWithCut(
  path: string,
  cut: number,
  options: OpenImageOptions = {},
): Promise<CutOpen> {
  let cutting: CuttingFile | undefined;
  const device = await openImage(path, {
    ...options,
    openFile: async (filePath, readOnly) => {
      const file = await NodeHostFile.open(filePath, { readOnly });
      if (readOnly) return file;
      cutting = new CuttingFile(file, cut);
      return cutting;
    },
  });
  return { device, cutting: () => cutting };
}

/**
 * Runs `operation` on the image opened through a cut, then flush and close; errors after the cut are
 * what a dead process would never see and are dropped. Returns the writes that reached the file.
 */
export async function runCutOperation(
  path: string,
  cut: number,
  operation: (device: BlockDevice) => Promise<unknown>,
  options: OpenImageOptions = {},
): Promise<number> {
  const { device, cutting } = await openWithCut(path, cut, options);
  const isCut = (): boolean => cutting()?.isCut ?? false;
  try {
    await operation(device);
    await device.flush();
  } catch (err) {
    if (!isCut()) throw err;
  }
  try {
    await device.close();
  } catch (err) {
    if (!isCut()) throw err;
  }
  return cutting()?.writeCount ?? 0;
}
