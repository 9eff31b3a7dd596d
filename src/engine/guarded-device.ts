// Wraps every opened device, as nbdkit's backend.c wraps plugins: range, integer and read-only checks
// happen once here, so drivers trust their arguments. Errors name the image file and the offending range.

import type {
  BlockDevice,
  Extent,
  ImageInfo,
  SnapshotOperations,
  WriteOptions,
  WriteZeroesOptions,
} from './block-device.ts';
import { InvalidOptionError, PermissionError } from './errors.ts';

export interface GuardOptions {
  /** Name used in messages (the image path). */
  file: string;
  /** Refuses a write to the first 512 bytes when this says the new bytes would change the probed format. */
  sectorZeroGuard?: (newSectorZero: Uint8Array) => string | undefined;
}

export class GuardedDevice implements BlockDevice {
  readonly inner: BlockDevice;
  private readonly guard: GuardOptions;

  // Optional abilities are present exactly when the inner device has them, so callers can test them.
  readonly writeCompressed?: (offsetBytes: number, data: Uint8Array) => Promise<void>;
  readonly resize?: (
    sizeBytes: number,
    options: { shrink: boolean; preallocation?: string; allowDataLoss?: boolean },
  ) => Promise<void>;
  readonly setBackingFile?: (name: string | undefined, format: string | undefined) => Promise<void>;
  readonly makeEmpty?: () => Promise<void>;
  readonly amend?: (options: Record<string, string>) => Promise<void>;
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;

  constructor(inner: BlockDevice, guard: GuardOptions) {
    this.inner = inner;
    this.guard = guard;
    const writeCompressed = inner.writeCompressed?.bind(inner);
    if (writeCompressed) {
      this.writeCompressed = async (offsetBytes, data) => {
        this.checkRange('compressed write', offsetBytes, data.length);
        this.checkWritable('compressed write', offsetBytes, data);
        if (data.length === 0) return;
        await writeCompressed(offsetBytes, data);
      };
    }
    const resize = inner.resize?.bind(inner);
    if (resize) {
      this.resize = async (sizeBytes, options) => {
        this.checkWritable('resize', Number.MAX_SAFE_INTEGER);
        await resize(sizeBytes, options);
      };
    }
    const setBackingFile = inner.setBackingFile?.bind(inner);
    if (setBackingFile) {
      this.setBackingFile = async (name, format) => {
        this.checkWritable('backing file change', Number.MAX_SAFE_INTEGER);
        await setBackingFile(name, format);
      };
    }
    const makeEmpty = inner.makeEmpty?.bind(inner);
    if (makeEmpty) {
      this.makeEmpty = async () => {
        this.checkWritable('make empty', Number.MAX_SAFE_INTEGER);
        await makeEmpty();
      };
    }
    const readCached = inner.readCached;
    if (readCached) {
      this.readCached = (offsetBytes, buffer) => {
        this.checkRange('read', offsetBytes, buffer.length);
        return buffer.length === 0 ? 0 : readCached(offsetBytes, buffer);
      };
    }
    const amend = inner.amend?.bind(inner);
    if (amend) {
      this.amend = async (options) => {
        this.checkWritable('amend', Number.MAX_SAFE_INTEGER);
        await amend(options);
      };
    }
  }

  get compressedWriteUnitBytes(): number | undefined {
    return this.inner.compressedWriteUnitBytes;
  }
  get hasZeroInit(): boolean | undefined {
    return this.inner.hasZeroInit;
  }
  get snapshots(): SnapshotOperations | undefined {
    return this.inner.snapshots;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  get isReadOnly(): boolean {
    return this.inner.isReadOnly;
  }
  get preferredBlockSizeBytes(): number {
    return this.inner.preferredBlockSizeBytes;
  }
  get backing(): BlockDevice | undefined {
    return this.inner.backing;
  }
  get formatName(): string {
    return this.inner.formatName;
  }

  private checkRange(operation: string, offsetBytes: number, lengthBytes: number): void {
    if (
      !Number.isSafeInteger(offsetBytes) ||
      !Number.isSafeInteger(lengthBytes) ||
      offsetBytes < 0 ||
      lengthBytes < 0
    ) {
      throw new InvalidOptionError({
        option: 'offset',
        value: offsetBytes,
        message: `${this.guard.file}: ${operation} at offset ${offsetBytes} length ${lengthBytes}: not a non-negative integer range`,
      });
    }
    if (offsetBytes + lengthBytes > this.inner.sizeBytes) {
      throw new InvalidOptionError({
        option: 'offset',
        value: offsetBytes,
        message: `${this.guard.file}: ${operation} at offset ${offsetBytes} length ${lengthBytes} is past the end of the device (${this.inner.sizeBytes} bytes)`,
      });
    }
  }

  private checkWritable(operation: string, offsetBytes: number, data?: Uint8Array): void {
    if (this.inner.isReadOnly) {
      throw new PermissionError({
        file: this.guard.file,
        message: `${operation} refused: the image is open read-only`,
      });
    }
    if (this.guard.sectorZeroGuard && offsetBytes < 512) {
      const sector = new Uint8Array(512);
      if (data) sector.set(data.subarray(0, 512 - offsetBytes), offsetBytes);
      const reason = this.guard.sectorZeroGuard(sector);
      if (reason) throw new PermissionError({ file: this.guard.file, message: reason });
    }
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    this.checkRange('read', offsetBytes, buffer.length);
    if (buffer.length === 0) return;
    await this.inner.read(offsetBytes, buffer);
  }

  async write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.checkRange('write', offsetBytes, data.length);
    this.checkWritable('write', offsetBytes, data);
    if (data.length === 0) return;
    await this.inner.write(offsetBytes, data, options);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    this.checkRange('write zeroes', offsetBytes, lengthBytes);
    this.checkWritable('write zeroes', offsetBytes);
    if (lengthBytes === 0) return;
    await this.inner.writeZeroes(offsetBytes, lengthBytes, options);
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange('discard', offsetBytes, lengthBytes);
    this.checkWritable('discard', offsetBytes);
    if (lengthBytes === 0) return;
    await this.inner.discard(offsetBytes, lengthBytes);
  }

  async flush(): Promise<void> {
    if (this.inner.isReadOnly) return;
    await this.inner.flush();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkRange('block status', offsetBytes, lengthBytes);
    if (lengthBytes === 0) return [];
    return this.inner.blockStatus(offsetBytes, lengthBytes);
  }

  info(): Promise<ImageInfo> {
    return this.inner.info();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
