// `measure -O parallels` (beyond qemu-img 7.2, which cannot measure parallels): the header and BAT
// padded to a whole cluster as create writes them (data_off), then one cluster per stored cluster.

import { InvalidOptionError } from '../../errors.ts';
import { sizeOption } from '../../size.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import type { MeasureInput, MeasureResult } from '../driver.ts';
import { batEntryOffsetBytes } from './header.ts';

/** Host bytes of a parallels image vdisk would create (or convert into) for `input`; throws InvalidOptionError. */
export async function measureParallels(input: MeasureInput): Promise<MeasureResult> {
  const clusterBytes = sizeOption(input.options, 'cluster_size', 1024 * 1024);
  if (clusterBytes < 512 || clusterBytes % 512 !== 0) {
    throw new InvalidOptionError({
      option: 'cluster_size',
      value: clusterBytes,
      message: 'Cluster size must be a multiple of 512 bytes',
    });
  }
  if (input.sizeBytes >= 2 ** 32 * clusterBytes) {
    throw new InvalidOptionError({
      option: 'size',
      value: input.sizeBytes,
      message: 'Image size is too large for this cluster size',
    });
  }
  const clusters = Math.ceil(input.sizeBytes / clusterBytes);
  const dataOffsetBytes = Math.ceil(batEntryOffsetBytes(clusters) / clusterBytes) * clusterBytes;
  let storedClusters = 0;
  if (input.source)
    await forEachStoredUnit(input.source, clusterBytes, (cluster) => {
      if (cluster < clusters) storedClusters++;
    });
  return {
    requiredBytes: dataOffsetBytes + storedClusters * clusterBytes,
    fullyAllocatedBytes: dataOffsetBytes + clusters * clusterBytes,
  };
}
