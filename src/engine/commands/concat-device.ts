// Several images read back to back as one read-only device: the source of `qemu-img convert a b c
// out`, which concatenates its inputs. Block status is each part's chain-wide answer, shifted to the
// part's place; there is no backing at this level (convert -B refuses several sources, as qemu does).

import type { BlockDevice, Extent, ImageInfo } from '../block-device.ts';
import { PermissionError } from '../errors.ts';
import { chainBlockStatus } from './chain-status.ts';

interface Part {
  device: BlockDevice;
  startBytes: number;
}

/** A read-only device over `devices` in order; closing it closes them. */
export class ConcatDevice implements BlockDevice {
  readonly isReadOnly = true;
  readonly backing = undefined;
  readonly formatName = 'concat';
  readonly sizeBytes: number;
  readonly preferredBlockSizeBytes: number;
  private readonly parts: Part[];

  constructor(devices: readonly BlockDevice[]) {
    let startBytes = 0;
    this.parts = devices.map((device) => {
      const part = { device, startBytes };
      startBytes += device.sizeBytes;
      return part;
    });
    this.sizeBytes = startBytes;
    this.preferredBlockSizeBytes = Math.max(512, ...devices.map((device) => device.preferredBlockSizeBytes));
  }

  /** The part holding `offsetBytes` (offsets past the end belong to the last part). */
  private partAt(offsetBytes: number): Part {
    let found = this.parts[0];
    for (const part of this.parts) {
      if (part.startBytes > offsetBytes) break;
      if (part.device.sizeBytes > 0) found = part;
    }
    if (!found) throw new PermissionError({ message: 'concatenation of no images' });
    return found;
  }

  async read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const part = this.partAt(offsetBytes + done);
      const inner = offsetBytes + done - part.startBytes;
      const lengthBytes = Math.min(buffer.length - done, part.device.sizeBytes - inner);
      await part.device.read(inner, buffer.subarray(done, done + lengthBytes));
      done += lengthBytes;
    }
  }

  private refuse(): Promise<never> {
    return Promise.reject(new PermissionError({ message: 'a concatenation of source images is read-only' }));
  }
  write(_offsetBytes: number, _data: Uint8Array): Promise<void> {
    return this.refuse();
  }
  writeZeroes(_offsetBytes: number, _lengthBytes: number): Promise<void> {
    return this.refuse();
  }
  discard(_offsetBytes: number, _lengthBytes: number): Promise<void> {
    return this.refuse();
  }
  async flush(): Promise<void> {}

  /** The part's chain-wide status at `offsetBytes`, as allocated extents in concatenated offsets. */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const part = this.partAt(offsetBytes);
    const inner = offsetBytes - part.startBytes;
    const innerLength = Math.min(lengthBytes, part.device.sizeBytes - inner);
    const extents = await chainBlockStatus(part.device, inner, innerLength);
    return extents.map((extent) => ({
      offsetBytes: extent.offsetBytes + part.startBytes,
      lengthBytes: extent.lengthBytes,
      allocated: true,
      zero: extent.zero,
      data: extent.data,
    }));
  }

  async info(): Promise<ImageInfo> {
    return { format: this.formatName, filename: '', virtualSizeBytes: this.sizeBytes };
  }

  async close(): Promise<void> {
    const results = await Promise.allSettled(this.parts.map((part) => part.device.close()));
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}
