// Block status across a backing chain, as qemu's img_map get_block_status walks it: a range is
// answered by the first layer that allocates it; unallocated ranges fall to the backing device, and
// read as zeros past the backing's end or where no backing exists. Shared by map, convert and compare.

import type { BlockDevice } from '../block-device.ts';

/** One run with a uniform answer from the chain. */
export interface ChainExtent {
  offsetBytes: number;
  lengthBytes: number;
  /** Index of the layer that answered: 0 is the top image, 1 its backing, ... */
  depth: number;
  /** Some layer allocates the range (qemu's "present"). */
  present: boolean;
  zero: boolean;
  data: boolean;
  hostOffsetBytes?: number;
  hostFile?: string;
  compressed?: boolean;
}

export interface ChainStatusOptions {
  /** Report the top layer's unallocated ranges as not present at depth 0 instead of asking the
   * backing (convert -B copies only what the top layer holds). */
  topOnly?: boolean;
  /** Answer as qemu-img would (map, compare -s): formats whose qemu driver has no block status
   * report every range as stored data without a host offset, whatever vdisk's driver knows. */
  qemuView?: boolean;
}

/**
 * Formats whose qemu 7.2 driver has no bdrv_co_block_status, so qemu-img map and compare see all
 * of them as data (block/io.c's fallback).
 */
const QEMU_FORMATS_WITHOUT_BLOCK_STATUS: ReadonlySet<string> = new Set(['vhdx', 'bochs', 'cloop', 'dmg']);

/**
 * Chain extents covering [offsetBytes, offsetBytes+lengthBytes), in order, possibly ending early
 * (callers loop).
 */
export async function chainBlockStatus(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
  options: ChainStatusOptions = {},
  depth = 0,
): Promise<ChainExtent[]> {
  const topOnly = options.topOnly ?? false;
  const extents =
    options.qemuView && QEMU_FORMATS_WITHOUT_BLOCK_STATUS.has(device.formatName)
      ? [{ offsetBytes, lengthBytes, allocated: true, zero: false, data: true }]
      : await device.blockStatus(offsetBytes, lengthBytes);
  const result: ChainExtent[] = [];
  for (const extent of extents) {
    if (extent.lengthBytes <= 0) break;
    if (extent.allocated) {
      result.push({
        offsetBytes: extent.offsetBytes,
        lengthBytes: extent.lengthBytes,
        depth,
        present: true,
        zero: extent.zero,
        data: extent.data,
        hostOffsetBytes: extent.hostOffsetBytes,
        hostFile: extent.hostFile,
        compressed: extent.compressed,
      });
      continue;
    }
    const backing = device.backing;
    const backingEndBytes =
      backing && !topOnly
        ? Math.min(backing.sizeBytes, extent.offsetBytes + extent.lengthBytes)
        : extent.offsetBytes;
    if (backing && !topOnly && extent.offsetBytes < backingEndBytes) {
      const below = await chainBlockStatus(
        backing,
        extent.offsetBytes,
        backingEndBytes - extent.offsetBytes,
        { qemuView: options.qemuView },
        depth + 1,
      );
      result.push(...below);
      const belowEnd =
        below.length === 0
          ? extent.offsetBytes
          : (below.at(-1)?.offsetBytes ?? 0) + (below.at(-1)?.lengthBytes ?? 0);
      // The backing answered only part of the range: stop here so the caller asks again from there.
      if (belowEnd < backingEndBytes) return result;
      if (backingEndBytes < extent.offsetBytes + extent.lengthBytes) {
        result.push({
          offsetBytes: backingEndBytes,
          lengthBytes: extent.offsetBytes + extent.lengthBytes - backingEndBytes,
          depth,
          present: false,
          zero: true,
          data: false,
        });
      }
      continue;
    }
    result.push({
      offsetBytes: extent.offsetBytes,
      lengthBytes: extent.lengthBytes,
      depth,
      // qemu (block/io.c) counts a zero range as allocated in formats that cannot have a backing
      // file (vdi, vpc, ...): only a format with backing support can leave a range to a lower layer.
      present: !backing && !canHaveBacking(device),
      zero: !topOnly || !backing,
      data: false,
    });
  }
  return result;
}

/**
 * Formats whose qemu driver sets supports_backing (qcow2, qcow, qed, vmdk, parallels). qemu's map and
 * compare call an unallocated range of any other format allocated, so vdisk answers as qemu does even
 * where its own driver reads more (vdisk's vpc follows differencing VHDs, qemu's does not).
 */
const QEMU_BACKING_FORMATS: ReadonlySet<string> = new Set(['qcow2', 'qcow', 'qed', 'vmdk', 'parallels']);

function canHaveBacking(device: BlockDevice): boolean {
  return QEMU_BACKING_FORMATS.has(device.formatName);
}

/** What a walk reports for [fromBytes, endBytes) when the device stops answering: data, so it is copied. */
function restAsData(fromBytes: number, endBytes: number): ChainExtent {
  return {
    offsetBytes: fromBytes,
    lengthBytes: endBytes - fromBytes,
    depth: 0,
    present: true,
    zero: false,
    data: true,
  };
}

/** Iterates chain extents over the whole of [offsetBytes, endBytes), looping over partial answers. */
export async function* walkChain(
  device: BlockDevice,
  offsetBytes: number,
  endBytes: number,
  options: ChainStatusOptions = {},
): AsyncGenerator<ChainExtent> {
  let positionBytes = offsetBytes;
  while (positionBytes < endBytes) {
    const extents = await chainBlockStatus(device, positionBytes, endBytes - positionBytes, options);
    if (extents.length === 0) {
      // A driver that answers nothing would loop forever; treat the rest as data so it is copied.
      yield restAsData(positionBytes, endBytes);
      return;
    }
    const before = positionBytes;
    for (const extent of extents) {
      const startBytes = Math.max(extent.offsetBytes, positionBytes);
      const stopBytes = Math.min(extent.offsetBytes + extent.lengthBytes, endBytes);
      if (stopBytes <= startBytes) continue;
      const shiftBytes = startBytes - extent.offsetBytes;
      yield {
        ...extent,
        offsetBytes: startBytes,
        lengthBytes: stopBytes - startBytes,
        hostOffsetBytes:
          extent.hostOffsetBytes === undefined ? undefined : extent.hostOffsetBytes + shiftBytes,
      };
      positionBytes = stopBytes;
    }
    if (positionBytes === before) {
      yield restAsData(positionBytes, endBytes);
      return;
    }
  }
}
