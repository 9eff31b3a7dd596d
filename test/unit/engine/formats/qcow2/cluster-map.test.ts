// L1/L2 entry encoding: standard, zero (with and without a host cluster) and compressed descriptors for
// every cluster size, as qcow2.txt "Cluster mapping" lays out the bits.

import { describe, expect, it } from 'vitest';
import {
  compressedClusterSpan,
  decodeL2,
  l1Copied,
  l1Offset,
  writeCompressedEntry,
  writeEntry,
} from '../../../../../src/engine/formats/qcow2/cluster-map.ts';

describe('qcow2 cluster map entries', () => {
  it('decodes standard entries: unallocated, normal with COPIED, zero-plain, zero-alloc', () => {
    const table = Buffer.alloc(64);
    writeEntry(table, 1, 0x1234_5678_0000, true);
    writeEntry(table, 2, 0, false, true);
    writeEntry(table, 3, 0x20000, false, true);
    expect(decodeL2(table, 0, 16).kind).toBe('unallocated');
    expect(decodeL2(table, 1, 16)).toMatchObject({
      kind: 'normal',
      hostOffsetBytes: 0x1234_5678_0000,
      copied: true,
    });
    expect(table.readBigUInt64BE(8)).toBe(0x8000_1234_5678_0000n);
    expect(decodeL2(table, 2, 16)).toMatchObject({ kind: 'zero-plain', hostOffsetBytes: 0 });
    expect(decodeL2(table, 3, 16)).toMatchObject({
      kind: 'zero-alloc',
      hostOffsetBytes: 0x20000,
      copied: false,
    });
    expect(l1Offset(table, 1)).toBe(0x1234_5678_0000);
    expect(l1Copied(table, 1)).toBe(true);
  });

  it('flags reserved bits', () => {
    const table = Buffer.alloc(8);
    table.writeBigUInt64BE(0x0100_0000_0001_0002n);
    expect(decodeL2(table, 0, 16).hasReservedBits).toBe(true);
  });

  for (let clusterBits = 9; clusterBits <= 21; clusterBits++) {
    it(`round-trips compressed descriptors with cluster_bits ${clusterBits}`, () => {
      const table = Buffer.alloc(16);
      const clusterSizeBytes = 2 ** clusterBits;
      for (const [hostOffsetBytes, lengthBytes] of [
        [3 * clusterSizeBytes + 100, 1],
        [5 * clusterSizeBytes + 511, clusterSizeBytes - 1],
        [2 ** 40 + 7, 600],
      ] as const) {
        writeCompressedEntry(table, 1, clusterBits, hostOffsetBytes, lengthBytes);
        const mapping = decodeL2(table, 1, clusterBits);
        expect(mapping.kind).toBe('compressed');
        expect(mapping.hostOffsetBytes).toBe(hostOffsetBytes);
        // The descriptor counts whole sectors: the size covers the data and ends on a sector boundary.
        expect(mapping.compressedSizeBytes).toBeGreaterThanOrEqual(lengthBytes);
        expect((hostOffsetBytes + mapping.compressedSizeBytes) % 512).toBe(0);
        expect(mapping.compressedSizeBytes - lengthBytes).toBeLessThan(512);
        const span = compressedClusterSpan(mapping, clusterBits);
        expect(span.firstCluster).toBe(Math.floor(hostOffsetBytes / clusterSizeBytes));
      }
    });
  }
});
