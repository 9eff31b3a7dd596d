// The partition engine's public face: read a table from any device, plan and write a layout.
// Importers outside src/engine/partition use this file only.

export {
  applyLayout,
  type LayoutPartition,
  type PartitionLayout,
  type PlannedPartition,
  planLayout,
} from './layout.ts';
export { readPartitionTable } from './read.ts';
export {
  bufferIo,
  type PartitionEntry,
  type PartitionIo,
  type PartitionTable,
  SECTOR_BYTES,
} from './types.ts';
