// qemu-img map: the guest range's allocation across the backing chain, one entry per run with the
// same depth, present/zero/data flags and a contiguous host offset, merged as qemu-img's
// entry_mergeable() merges them (qemu-img.c, img_map).

import type { BlockDevice } from '../block-device.ts';
import { walkChain } from './chain-status.ts';

/** One line of `qemu-img map --output=json`. */
export interface MapEntry {
  startBytes: number;
  lengthBytes: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset, when the bytes sit plainly in `hostFile`. */
  offsetBytes?: number;
  hostFile?: string;
  compressed?: boolean;
}

function mergeable(current: MapEntry, next: MapEntry): boolean {
  if (current.lengthBytes === 0) return false;
  if (
    current.zero !== next.zero ||
    current.data !== next.data ||
    current.depth !== next.depth ||
    current.present !== next.present
  )
    return false;
  if (Boolean(current.compressed) !== Boolean(next.compressed)) return false;
  if ((current.offsetBytes === undefined) !== (next.offsetBytes === undefined)) return false;
  if (current.offsetBytes !== undefined) {
    if (current.hostFile !== next.hostFile) return false;
    if (current.offsetBytes + current.lengthBytes !== next.offsetBytes) return false;
  }
  return true;
}

/** Merged map entries for [startBytes, startBytes+lengthBytes) of `device` (default: all of it). */
export async function* mapImage(
  device: BlockDevice,
  startBytes = 0,
  lengthBytes = device.sizeBytes - startBytes,
): AsyncGenerator<MapEntry> {
  let current: MapEntry | undefined;
  for await (const extent of walkChain(device, startBytes, startBytes + lengthBytes, { qemuView: true })) {
    const next: MapEntry = {
      startBytes: extent.offsetBytes,
      lengthBytes: extent.lengthBytes,
      depth: extent.depth,
      present: extent.present,
      zero: extent.zero,
      data: extent.data,
      offsetBytes: extent.hostOffsetBytes,
      hostFile: extent.hostOffsetBytes === undefined ? undefined : extent.hostFile,
      compressed: extent.compressed,
    };
    if (current && mergeable(current, next)) {
      current.lengthBytes += next.lengthBytes;
      continue;
    }
    if (current) yield current;
    current = next;
  }
  if (current) yield current;
}
