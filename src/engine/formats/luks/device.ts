// Guest I/O on an unlocked LUKS1 volume: guest byte N sits at payload offset + N, enciphered per
// 512-byte sector with the IV of its guest sector (qemu's block/crypto.c). Partial sectors are read,
// patched and rewritten under one lock so concurrent writers cannot interleave inside a sector.

import type { BlockDevice, Extent, ImageInfo, WriteOptions } from '../../block-device.ts';
import { luksInfo } from '../../crypto/luks-volume.ts';
import type { LuksHeader } from '../../crypto/luks-header.ts';
import { CRYPT_SECTOR_BYTES, type SectorCipher } from '../../crypto/sector-cipher.ts';
import { InvalidOptionError, PermissionError, UnsupportedError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import { Mutex } from '../qcow2/mutex.ts';

/** Largest run enciphered at once: bounds memory for big reads, writes and zero fills. */
const CHUNK_BYTES = 1024 * 1024;

export class LuksDevice implements BlockDevice {
  sizeBytes: number;
  readonly isReadOnly: boolean;
  readonly preferredBlockSizeBytes = CRYPT_SECTOR_BYTES;
  readonly backing = undefined;
  readonly formatName = 'luks';
  /** An unwritten payload deciphers to noise, not zeros. */
  readonly hasZeroInit = false;
  private readonly file: HostFile;
  private readonly path: string;
  private readonly header: LuksHeader;
  private readonly cipher: SectorCipher | undefined;
  private readonly payloadOffsetBytes: number;
  private readonly lock = new Mutex();
  private closed = false;

  constructor(parts: {
    file: HostFile;
    path: string;
    header: LuksHeader;
    cipher: SectorCipher | undefined;
    sizeBytes: number;
    readOnly: boolean;
  }) {
    this.file = parts.file;
    this.path = parts.path;
    this.header = parts.header;
    this.cipher = parts.cipher;
    this.sizeBytes = parts.sizeBytes;
    this.isReadOnly = parts.readOnly;
    this.payloadOffsetBytes = parts.header.payloadOffsetSectors * CRYPT_SECTOR_BYTES;
  }

  private requireCipher(): SectorCipher {
    if (!this.cipher)
      throw new InvalidOptionError({
        option: 'key-secret',
        message: `${this.path}: Parameter 'key-secret' is required for cipher`,
      });
    return this.cipher;
  }

  /** Reads whole sectors [offsetBytes, +buffer.length) of the guest (both sector aligned). */
  private async readSectors(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    const cipher = this.requireCipher();
    for (let done = 0; done < buffer.length; done += CHUNK_BYTES) {
      const part = buffer.subarray(done, Math.min(buffer.length, done + CHUNK_BYTES));
      const count = await this.file.read(this.payloadOffsetBytes + offsetBytes + done, part);
      part.fill(0, count);
      part.set(cipher.decrypt(part, (offsetBytes + done) / CRYPT_SECTOR_BYTES));
    }
  }

  private async writeSectors(offsetBytes: number, data: Uint8Array): Promise<void> {
    const cipher = this.requireCipher();
    for (let done = 0; done < data.length; done += CHUNK_BYTES) {
      const part = data.subarray(done, Math.min(data.length, done + CHUNK_BYTES));
      const stored = cipher.encrypt(part, (offsetBytes + done) / CRYPT_SECTOR_BYTES);
      await this.file.write(this.payloadOffsetBytes + offsetBytes + done, stored);
    }
  }

  private static around(offsetBytes: number, lengthBytes: number): { start: number; end: number } {
    return {
      start: Math.floor(offsetBytes / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES,
      end: Math.ceil((offsetBytes + lengthBytes) / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES,
    };
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    const { start, end } = LuksDevice.around(offsetBytes, buffer.length);
    if (start === offsetBytes && end === offsetBytes + buffer.length)
      return this.readSectors(offsetBytes, buffer);
    const whole = new Uint8Array(end - start);
    await this.readSectors(start, whole);
    buffer.set(whole.subarray(offsetBytes - start, offsetBytes - start + buffer.length));
  }

  private checkWritable(): void {
    if (this.isReadOnly)
      throw new PermissionError({ file: this.path, message: 'write refused: the image is open read-only' });
  }

  async write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.checkWritable();
    await this.lock.run(async () => {
      const { start, end } = LuksDevice.around(offsetBytes, data.length);
      if (start === offsetBytes && end === offsetBytes + data.length)
        await this.writeSectors(offsetBytes, data);
      else {
        const whole = new Uint8Array(end - start);
        await this.readSectors(start, whole);
        whole.set(data, offsetBytes - start);
        await this.writeSectors(start, whole);
      }
      if (options?.fua) await this.file.sync();
    });
  }

  /** Zeros are enciphered like any data (the payload has no holes a guest could see as zeros). */
  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteOptions): Promise<void> {
    for (let done = 0; done < lengthBytes; done += CHUNK_BYTES)
      await this.write(
        offsetBytes + done,
        new Uint8Array(Math.min(CHUNK_BYTES, lengthBytes - done)),
        options,
      );
  }

  /** A hint only: enciphered sectors cannot be dropped without changing what they read as. */
  async discard(): Promise<void> {
    this.checkWritable();
  }

  /**
   * Grows or (with `shrink`) shrinks the payload, as qemu's luks truncate: new sectors decipher to noise
   * until written. Sizes are whole sectors; preallocation other than off is refused.
   */
  async resize(sizeBytes: number, options: { shrink: boolean; preallocation?: string }): Promise<void> {
    this.checkWritable();
    if (options.preallocation && options.preallocation !== 'off')
      throw new UnsupportedError({
        format: 'luks',
        feature: `resize with preallocation=${options.preallocation}`,
      });
    const rounded = Math.ceil(sizeBytes / CRYPT_SECTOR_BYTES) * CRYPT_SECTOR_BYTES;
    if (rounded < this.sizeBytes && !options.shrink)
      throw new InvalidOptionError({
        option: 'size',
        value: sizeBytes,
        message: `${this.path}: use --shrink to shrink the image`,
      });
    await this.lock.run(async () => {
      await this.file.truncate(this.payloadOffsetBytes + rounded);
      await this.file.sync();
      this.sizeBytes = rounded;
    });
  }

  async flush(): Promise<void> {
    if (!this.isReadOnly) await this.file.sync();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return [{ offsetBytes, lengthBytes, allocated: true, zero: false, data: true }];
  }

  async info(): Promise<ImageInfo> {
    const info: ImageInfo = {
      format: 'luks',
      filename: this.path,
      virtualSizeBytes: this.sizeBytes,
      encrypted: true,
      formatSpecific: { type: 'luks', data: luksInfo(this.header) },
    };
    if (this.file.allocatedBytes) info.actualSizeBytes = await this.file.allocatedBytes();
    return info;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.flush();
    } finally {
      await this.file.close();
    }
  }
}
