// qemu-img measure for qcow2: host bytes a new image needs for a virtual size and, with a source, for the
// source's allocated ranges. Same arithmetic as qemu 7.2's qcow2_measure, qcow2_calc_prealloc_size and
// qcow2_refcount_metadata_size (block/qcow2.c, block/qcow2-refcount.c), so the numbers match exactly.

import { InvalidOptionError } from '../../errors.ts';
import { forEachStoredRun } from '../common/measure.ts';
import type { MeasureInput, MeasureResult } from '../driver.ts';
import { luksHeaderClusterBytes, takeEncryptOptions } from './encryption.ts';
import { parseCreateSettings } from './options.ts';
import { QCOW2_MAX_L1_BYTES } from './header.ts';

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** Refcount table + block bytes needed to count `clusters` clusters and themselves (a fixed point). */
export function refcountMetadataBytes(
  clusters: number,
  clusterSizeBytes: number,
  refcountOrder: number,
): number {
  const blocksPerTableCluster = clusterSizeBytes / 8;
  const refcountsPerBlock = (clusterSizeBytes * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let total = 0;
  let last: number;
  do {
    last = total;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    total = clusters + blocks + table;
  } while (total !== last);
  return (blocks + table) * clusterSizeBytes;
}

/** Bytes of a fully preallocated image: header, L2 tables, L1 table, refcount structures and all data. */
export function fullyAllocatedBytes(
  virtualSizeBytes: number,
  clusterSizeBytes: number,
  refcountOrder: number,
  l2EntryBytes = 8,
): number {
  const alignedBytes = roundUp(virtualSizeBytes, clusterSizeBytes);
  let metaBytes = clusterSizeBytes;
  const l2Entries = roundUp(alignedBytes / clusterSizeBytes, clusterSizeBytes / l2EntryBytes);
  metaBytes += l2Entries * l2EntryBytes;
  const l1Entries = roundUp((l2Entries * l2EntryBytes) / clusterSizeBytes, clusterSizeBytes / 8);
  metaBytes += l1Entries * 8;
  metaBytes += refcountMetadataBytes(
    (metaBytes + alignedBytes) / clusterSizeBytes,
    clusterSizeBytes,
    refcountOrder,
  );
  return metaBytes + alignedBytes;
}

/** qemu-img measure -O qcow2: required and fully-allocated host bytes. Throws InvalidOptionError for bad options. */
export async function measureQcow2(input: MeasureInput): Promise<MeasureResult> {
  const options = { ...input.options };
  const hasBacking = options.backing_file !== undefined;
  delete options.size;
  delete options.backing_file;
  delete options.backing_fmt;
  const encryptOptions = takeEncryptOptions(options);
  const settings = parseCreateSettings(0, options);
  const clusterSizeBytes = 2 ** settings.clusterBits;
  const luksBytes = encryptOptions ? luksHeaderClusterBytes(encryptOptions, clusterSizeBytes) : 0;
  const virtualSizeBytes = roundUp(input.source ? input.source.sizeBytes : input.sizeBytes, clusterSizeBytes);
  const l2EntryBytes = settings.extendedL2 ? 16 : 8;
  const l2Tables = Math.ceil(virtualSizeBytes / clusterSizeBytes / (clusterSizeBytes / l2EntryBytes));
  if (l2Tables * 8 > QCOW2_MAX_L1_BYTES) {
    throw new InvalidOptionError({
      option: 'size',
      value: virtualSizeBytes,
      message: 'The image size is too large (try using a larger cluster size)',
    });
  }
  let requiredDataBytes = 0;
  if (input.source) {
    if (hasBacking) requiredDataBytes = virtualSizeBytes;
    else {
      // As qemu: each data run is extended to the end of its last cluster and counted from its cluster start.
      let countedEnd = 0;
      await forEachStoredRun(input.source, 0, input.source.sizeBytes, (offsetBytes, end) => {
        const start = Math.max(offsetBytes, countedEnd);
        if (start >= end) return;
        const extendedEnd = roundUp(end, clusterSizeBytes);
        requiredDataBytes += (start % clusterSizeBytes) + (extendedEnd - start);
        countedEnd = extendedEnd;
      });
    }
  }
  if (settings.preallocation === 'full' || settings.preallocation === 'falloc')
    requiredDataBytes = virtualSizeBytes;
  // As qemu: the LUKS header's clusters come on top of the metadata qcow2_calc_prealloc_size counts.
  const fully =
    luksBytes + fullyAllocatedBytes(virtualSizeBytes, clusterSizeBytes, settings.refcountOrder, l2EntryBytes);
  const result: MeasureResult = {
    requiredBytes: fully - virtualSizeBytes + requiredDataBytes,
    fullyAllocatedBytes: fully,
  };
  if (settings.version === 3 && input.source?.formatName === 'qcow2') result.bitmapsBytes = 0;
  return result;
}
