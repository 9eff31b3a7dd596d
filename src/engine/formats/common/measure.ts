// What `measure` needs to know of a source image for the block-table formats (vhdx, qed, parallels):
// which allocation units of the new image would hold data after `convert`, walking the backing chain
// as convert reads it (an unallocated run descends to the backing; zeros need no unit).

import type { BlockDevice } from '../../block-device.ts';

/**
 * Calls `visit(start, end)` for each run of [offsetBytes, endBytes) that reads as stored, non-zero data,
 * chain-wide: an unallocated run descends to the backing file, zeros are skipped. In ascending order.
 */
export async function forEachStoredRun(
  device: BlockDevice,
  offsetBytes: number,
  endBytes: number,
  visit: (offsetBytes: number, endBytes: number) => void,
): Promise<void> {
  let position = offsetBytes;
  while (position < endBytes) {
    const extents = await device.blockStatus(position, endBytes - position);
    if (extents.length === 0) break;
    for (const extent of extents) {
      const extentEnd = Math.min(endBytes, extent.offsetBytes + extent.lengthBytes);
      if (extent.allocated || !device.backing) {
        if (!extent.zero) visit(extent.offsetBytes, extentEnd);
      } else if (extent.offsetBytes < device.backing.sizeBytes) {
        await forEachStoredRun(
          device.backing,
          extent.offsetBytes,
          Math.min(extentEnd, device.backing.sizeBytes),
          visit,
        );
      }
      position = extentEnd;
    }
  }
}

/**
 * Calls `visit` once per `unitBytes` unit of the guest that holds non-zero-status bytes in `source`
 * (chain-wide), in ascending order. Memory stays constant whatever the image size.
 */
export async function forEachStoredUnit(
  source: BlockDevice,
  unitBytes: number,
  visit: (unitIndex: number) => void,
): Promise<void> {
  let nextUnvisited = 0;
  await forEachStoredRun(source, 0, source.sizeBytes, (offsetBytes, endBytes) => {
    const first = Math.max(nextUnvisited, Math.floor(offsetBytes / unitBytes));
    const last = Math.floor((endBytes - 1) / unitBytes);
    for (let unit = first; unit <= last; unit++) visit(unit);
    nextUnvisited = Math.max(nextUnvisited, last + 1);
  });
}
