// `vdisk serve -P N` (qemu-nbd --partition): one partition of the image as a device of its own. Every
// call is shifted by the partition's start and checked against its size by a GuardedDevice on top,
// so a client can't reach outside the partition. Partition tables: src/engine/partition (MBR, GPT).

import type {
  BlockDevice,
  Extent,
  ImageInfo,
  WriteOptions,
  WriteZeroesOptions,
} from '../engine/block-device.ts';
import { InvalidOptionError } from '../engine/errors.ts';
import { GuardedDevice } from '../engine/guarded-device.ts';
import { readPartitionTable } from '../engine/partition/index.ts';

class PartitionWindow implements BlockDevice {
  readonly sizeBytes: number;
  readonly isReadOnly: boolean;
  readonly preferredBlockSizeBytes: number;
  readonly backing = undefined;
  readonly formatName: string;
  readonly readCached?: (offsetBytes: number, buffer: Uint8Array) => number;
  private readonly inner: BlockDevice;
  private readonly startBytes: number;

  constructor(inner: BlockDevice, startBytes: number, sizeBytes: number) {
    this.inner = inner;
    this.startBytes = startBytes;
    this.sizeBytes = sizeBytes;
    this.isReadOnly = inner.isReadOnly;
    this.preferredBlockSizeBytes = inner.preferredBlockSizeBytes;
    this.formatName = inner.formatName;
    const readCached = inner.readCached;
    if (readCached) this.readCached = (offsetBytes, buffer) => readCached(startBytes + offsetBytes, buffer);
  }

  read(offsetBytes: number, buffer: Uint8Array): Promise<void> {
    return this.inner.read(this.startBytes + offsetBytes, buffer);
  }
  write(offsetBytes: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.inner.write(this.startBytes + offsetBytes, data, options);
  }
  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions): Promise<void> {
    return this.inner.writeZeroes(this.startBytes + offsetBytes, lengthBytes, options);
  }
  discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.discard(this.startBytes + offsetBytes, lengthBytes);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  /** The image's extents, shifted; what its backing chain holds is folded in, as this device has none. */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const extents = await this.inner.blockStatus(this.startBytes + offsetBytes, lengthBytes);
    return extents.map((extent) => ({
      ...extent,
      offsetBytes: extent.offsetBytes - this.startBytes,
      // Unallocated in the top layer may still hold backing data: report it as data, the safe answer.
      ...(extent.allocated
        ? {}
        : {
            allocated: true,
            data: this.inner.backing !== undefined,
            zero: this.inner.backing === undefined,
          }),
    }));
  }
  info(): Promise<ImageInfo> {
    return this.inner.info();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The partition numbered `partitionNumber` (1-based, as Linux numbers them) of `device`, as a device. */
export async function openPartition(
  device: BlockDevice,
  partitionNumber: number,
  file: string,
): Promise<BlockDevice> {
  const table = await readPartitionTable(device, file);
  const entry = table?.partitions.find(
    (candidate) => candidate.number === partitionNumber && candidate.kind !== 'extended',
  );
  if (!entry || entry.startBytes + entry.sizeBytes > device.sizeBytes) {
    throw new InvalidOptionError({
      option: 'partition',
      value: partitionNumber,
      message: `${file}: no partition ${partitionNumber}${table ? '' : ' (no partition table)'}`,
    });
  }
  return new GuardedDevice(new PartitionWindow(device, entry.startBytes, entry.sizeBytes), { file });
}
