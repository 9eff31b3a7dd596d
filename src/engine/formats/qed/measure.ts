// `measure -O qed` (beyond qemu-img 7.2, which cannot measure qed): the header cluster and L1 table as
// create writes them, then one L2 table per L1 entry that covers stored data and one cluster per
// stored cluster, as the allocating write path appends them.

import { sizeOption } from '../../size.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import type { MeasureInput, MeasureResult } from '../driver.ts';
import { checkQedGeometry, qedTableEntries } from './header.ts';

/** Host bytes of a qed image vdisk would create (or convert into) for `input`; throws InvalidOptionError. */
export async function measureQed(input: MeasureInput): Promise<MeasureResult> {
  const clusterSizeBytes = sizeOption(input.options, 'cluster_size', 64 * 1024);
  const tableClusters = sizeOption(input.options, 'table_size', 4);
  checkQedGeometry(clusterSizeBytes, tableClusters, 'measure');
  const tableBytes = tableClusters * clusterSizeBytes;
  const clustersPerTable = qedTableEntries({ clusterSizeBytes, tableClusters });
  const clusters = Math.ceil(input.sizeBytes / clusterSizeBytes);
  const tables = Math.ceil(clusters / clustersPerTable);
  const metadataBytes = clusterSizeBytes + tableBytes;
  let storedClusters = 0;
  let storedTables = 0;
  let lastTable = -1;
  if (input.source) {
    await forEachStoredUnit(input.source, clusterSizeBytes, (cluster) => {
      if (cluster >= clusters) return;
      storedClusters++;
      const table = Math.floor(cluster / clustersPerTable);
      if (table !== lastTable) storedTables++;
      lastTable = table;
    });
  }
  return {
    requiredBytes: metadataBytes + storedTables * tableBytes + storedClusters * clusterSizeBytes,
    fullyAllocatedBytes: metadataBytes + tables * tableBytes + clusters * clusterSizeBytes,
  };
}
