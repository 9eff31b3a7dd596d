// QED consistency check, as qemu's block/qed-check.c does it: every L1/L2 entry must be a valid
// cluster offset (corruption otherwise; repair clears it), clusters no table references are leaks,
// and a clean check clears the need-check feature bit. Spec: qed_spec.txt ("Consistency checking").

import type { CheckIssue, CheckReport, RepairMode } from '../driver.ts';
import { setU64le, viewOf } from '../common/binary.ts';
import { QED_CLUSTER_ZERO, QED_F_NEED_CHECK, type QedHeader } from './header.ts';
import type { QedTables } from './tables.ts';

/** Walks the tables of an open image; with `repair` it zeroes invalid entries in memory and on disk. */
export async function checkQedTables(args: {
  tables: QedTables;
  header: QedHeader;
  fileSizeBytes: number;
  repair: RepairMode;
  writeEntry: (tableOffsetBytes: number, index: number, table: Uint8Array) => Promise<void>;
  l1: Uint8Array;
  readL2: (offsetBytes: number) => Promise<Uint8Array>;
}): Promise<CheckReport> {
  const { tables, header } = args;
  const clusterBytes = header.clusterSizeBytes;
  const clusterCount = Math.floor(args.fileSizeBytes / clusterBytes);
  const used = new Uint8Array(Math.ceil(clusterCount / 8) + 1);
  const mark = (offsetBytes: number, clusters: number): void => {
    for (let i = 0; i < clusters; i++) {
      const cluster = offsetBytes / clusterBytes + i;
      if (cluster < clusterCount) used[cluster >> 3] = (used[cluster >> 3] ?? 0) | (1 << (cluster & 7));
    }
  };
  const issues: CheckIssue[] = [];
  let corruptionsFixed = 0;
  let allocatedClusters = 0;
  let fragmentedClusters = 0;
  let lastDataOffset = -1;
  const fix = args.repair === 'all';
  mark(0, header.headerClusters);
  mark(header.l1TableOffsetBytes, header.tableClusters);

  const badEntry = async (
    table: Uint8Array,
    tableOffsetBytes: number,
    index: number,
    what: string,
  ): Promise<void> => {
    issues.push({
      code: 'corruption',
      message: what,
      offsetBytes: tableOffsetBytes + index * 8,
      lengthBytes: 8,
      fixable: true,
    });
    if (fix) {
      setU64le(viewOf(table), index * 8, 0);
      await args.writeEntry(tableOffsetBytes, index, table);
      corruptionsFixed++;
    }
  };

  for (let l1Index = 0; l1Index < tables.entriesPerTable; l1Index++) {
    const l2Offset = tables.entryAt(args.l1, l1Index, header.l1TableOffsetBytes);
    if (l2Offset === 0) continue;
    if (!tables.isValidOffset(l2Offset, tables.tableBytes)) {
      await badEntry(
        args.l1,
        header.l1TableOffsetBytes,
        l1Index,
        `L1 entry ${l1Index} has an invalid L2 table offset ${l2Offset}`,
      );
      continue;
    }
    mark(l2Offset, header.tableClusters);
    const l2 = await args.readL2(l2Offset);
    for (let l2Index = 0; l2Index < tables.entriesPerTable; l2Index++) {
      const entry = tables.entryAt(l2, l2Index, l2Offset);
      if (entry === 0 || entry === QED_CLUSTER_ZERO) continue;
      if (!tables.isValidOffset(entry, 1)) {
        await badEntry(
          l2,
          l2Offset,
          l2Index,
          `L2 entry ${l2Index} of the table at ${l2Offset} has an invalid cluster offset ${entry}`,
        );
        continue;
      }
      allocatedClusters++;
      if (lastDataOffset >= 0 && lastDataOffset + clusterBytes !== entry) fragmentedClusters++;
      lastDataOffset = entry;
      mark(entry, 1);
    }
  }

  let leaks = 0;
  for (let cluster = header.headerClusters; cluster < clusterCount; cluster++) {
    if (((used[cluster >> 3] ?? 0) & (1 << (cluster & 7))) === 0) {
      leaks++;
      issues.push({
        code: 'leak',
        message: `leaked cluster ${cluster}`,
        offsetBytes: cluster * clusterBytes,
        lengthBytes: clusterBytes,
        fixable: false,
      });
    }
  }
  const corruptions = issues.filter((issue) => issue.code === 'corruption').length - corruptionsFixed;
  return {
    issues,
    leaks,
    corruptions,
    checkErrors: 0,
    leaksFixed: 0,
    corruptionsFixed,
    totalClusters: Math.ceil(header.imageSizeBytes / clusterBytes),
    allocatedClusters,
    fragmentedClusters,
  };
}

/** True when the header asks for a check before use (an unclean shutdown). */
export function qedNeedsCheck(header: QedHeader): boolean {
  return (header.features & QED_F_NEED_CHECK) !== 0;
}
