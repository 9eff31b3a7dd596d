// Consistency check and repair (qemu-img check): recompute every cluster's refcount from the metadata
// (header, L1/L2 tables, data and compressed clusters, refcount structures, snapshots), compare with the
// stored refcounts, verify COPIED flags; repair leaks and, with `all`, refcounts and flags. qcow2.txt + qcow2-refcount.c.

import type { CheckIssue, CheckReport, OpenContext, RepairMode } from '../driver.ts';
import {
  decodeL2,
  l1Copied,
  l1Offset,
  OFFSET_HIGH_MASK,
  OFFSET_LOW_MASK,
  OFLAG_COMPRESSED_HIGH,
  OFLAG_COPIED_HIGH,
  writeEntry,
} from './cluster-map.ts';
import { cryptoHeaderRange } from './encryption.ts';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, HEADER_FIELD } from './header.ts';
import type { Qcow2Image } from './image.ts';
import { loadImage } from './load.ts';
import { readRefcountEntry } from './refcount.ts';

/** Issues kept in a report (counts go on past it). */
const MAX_ISSUES = 1000;
/** qemu's QCOW_MAX_SNAPSHOTS. */
const MAX_SNAPSHOTS = 65536;

/** copiedSeen bits: an active L2 entry maps the cluster with COPIED set / with it clear. */
const SEEN_COPIED = 1;
const SEEN_NOT_COPIED = 2;

export interface Walk {
  fileClusters: number;
  computed: Uint32Array;
  /**
   * Per host cluster, how the active L2 entries that map it carry COPIED (SEEN_* bits), noted while
   * walking so that the refcount comparison can tell whether any flag can be wrong; only then does
   * checkCopiedFlags walk the L2 tables a second time (one pass of three, on a clean image).
   */
  copiedSeen: Uint8Array;
  /** An active entry the bits above can't vouch for (a data cluster past the end of the file). */
  copiedUnknown: boolean;
  /** References to clusters at or past the end of the file. */
  beyondEnd: Map<number, number>;
  issues: CheckIssue[];
  corruptions: number;
  checkErrors: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

function addIssue(walk: Walk, issue: CheckIssue): void {
  if (issue.code === 'corruption') walk.corruptions++;
  else if (issue.code === 'check-error') walk.checkErrors++;
  if (walk.issues.length < MAX_ISSUES) walk.issues.push(issue);
}

/**
 * An all-zero descriptor (the first 8 bytes; extended entries' bitmaps don't matter): decodeL2 calls it
 * 'unallocated' without COPIED (so not an external data file's cluster either), which both walks skip.
 * Testing first saves decoding the unused half of a typical table, which matters because `vdisk check`
 * runs cold: its loops are interpreted, not yet compiled.
 */
function isEmptyEntry(table: Buffer, index: number, extendedL2: boolean): boolean {
  const base = index * (extendedL2 ? 16 : 8);
  return table.readUInt32BE(base) === 0 && table.readUInt32BE(base + 4) === 0;
}

function reference(walk: Walk, clusterSizeBytes: number, offsetBytes: number, lengthBytes: number): void {
  if (lengthBytes <= 0) return;
  const first = Math.floor(offsetBytes / clusterSizeBytes);
  const last = Math.floor((offsetBytes + lengthBytes - 1) / clusterSizeBytes);
  for (let clusterIndex = first; clusterIndex <= last; clusterIndex++) {
    if (clusterIndex < walk.fileClusters)
      walk.computed[clusterIndex] = (walk.computed[clusterIndex] ?? 0) + 1;
    else walk.beyondEnd.set(clusterIndex, (walk.beyondEnd.get(clusterIndex) ?? 0) + 1);
  }
}

function noteCopied(walk: Walk, hostCluster: number, copied: boolean): void {
  if (hostCluster < walk.fileClusters)
    walk.copiedSeen[hostCluster] =
      (walk.copiedSeen[hostCluster] ?? 0) | (copied ? SEEN_COPIED : SEEN_NOT_COPIED);
  else walk.copiedUnknown = true;
}

function misalignedDataCluster(hostOffsetBytes: number, entryOffsetBytes: number): CheckIssue {
  return {
    code: 'corruption',
    message: `data cluster offset ${hostOffsetBytes} is not cluster aligned`,
    offsetBytes: entryOffsetBytes,
    lengthBytes: 8,
    fixable: false,
  };
}

/** Walks one L1 table (the active one, or a snapshot's) and its L2 tables. */
async function walkL1(
  image: Qcow2Image,
  walk: Walk,
  l1: Buffer,
  l1OffsetBytes: number,
  isActive: boolean,
): Promise<void> {
  const clusterSizeBytes = image.clusterSizeBytes;
  // Standard entries of a file that holds its own data take the fast path in the loop below.
  const standard = !image.extendedL2 && !image.hasDataFile;
  reference(walk, clusterSizeBytes, l1OffsetBytes, l1.length);
  let nextContiguousOffset = 0;
  for (let l1Index = 0; l1Index < l1.length / 8; l1Index++) {
    const l2OffsetBytes = l1Offset(l1, l1Index);
    if (l2OffsetBytes === 0) continue;
    if (l2OffsetBytes % clusterSizeBytes !== 0) {
      addIssue(walk, {
        code: 'corruption',
        message: `L2 table offset ${l2OffsetBytes} of L1 entry ${l1Index} is not cluster aligned`,
        offsetBytes: l1OffsetBytes + l1Index * 8,
        lengthBytes: 8,
        fixable: false,
      });
      continue;
    }
    reference(walk, clusterSizeBytes, l2OffsetBytes, clusterSizeBytes);
    if (l2OffsetBytes / clusterSizeBytes >= walk.fileClusters) continue;
    // Used in place: nothing below awaits, so the cache can't evict or reuse it mid-loop.
    const table = await image.l2Cache.get(l2OffsetBytes);
    // Each entry's two words are read once, through a DataView: its getUint32 is a builtin, fast even
    // in the interpreter a cold `vdisk check` runs in, where Buffer.readUInt32BE is JavaScript.
    const words = new DataView(table.buffer, table.byteOffset, table.length);
    const entryBytes = image.extendedL2 ? 16 : 8;
    for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
      const high = words.getUint32(l2Index * entryBytes);
      const low = words.getUint32(l2Index * entryBytes + 4);
      // An all-zero descriptor: unallocated, not an external data file's cluster (see isEmptyEntry).
      if (high === 0 && low === 0) continue;
      if (standard && (high & OFLAG_COMPRESSED_HIGH) === 0) {
        // A standard, uncompressed entry is a data or zero cluster: only its host offset matters
        // here, read without decoding the entry into an object (as the switch below would).
        const hostOffsetBytes = (high & OFFSET_HIGH_MASK) * 2 ** 32 + ((low & OFFSET_LOW_MASK) >>> 0);
        if (hostOffsetBytes === 0) continue;
        if (isActive) {
          walk.allocatedClusters++;
          if (nextContiguousOffset !== 0 && hostOffsetBytes !== nextContiguousOffset)
            walk.fragmentedClusters++;
          nextContiguousOffset = hostOffsetBytes + clusterSizeBytes;
        }
        if (hostOffsetBytes % clusterSizeBytes !== 0) {
          addIssue(walk, misalignedDataCluster(hostOffsetBytes, l2OffsetBytes + l2Index * 8));
          continue;
        }
        reference(walk, clusterSizeBytes, hostOffsetBytes, clusterSizeBytes);
        if (isActive) noteCopied(walk, hostOffsetBytes / clusterSizeBytes, (high & OFLAG_COPIED_HIGH) !== 0);
        continue;
      }
      let mapping = decodeL2(table, l2Index, image.clusterBits, image.extendedL2);
      // Offset 0 with COPIED is a data cluster in an external data file (as image.ts decodes it).
      if (image.hasDataFile && mapping.kind === 'unallocated' && mapping.copied)
        mapping = { ...mapping, kind: 'normal' };
      const entryOffset = l2OffsetBytes + l2Index * 8;
      switch (mapping.kind) {
        case 'compressed':
          if (mapping.hasReservedBits)
            addIssue(walk, {
              code: 'corruption',
              message: 'compressed cluster has the COPIED flag set',
              offsetBytes: entryOffset,
              lengthBytes: 8,
              fixable: false,
            });
          if (isActive) {
            walk.allocatedClusters++;
            walk.compressedClusters++;
            walk.fragmentedClusters++;
          }
          reference(walk, clusterSizeBytes, mapping.hostOffsetBytes, mapping.compressedSizeBytes);
          break;
        case 'normal':
        case 'zero-alloc':
          if (isActive) {
            walk.allocatedClusters++;
            if (nextContiguousOffset !== 0 && mapping.hostOffsetBytes !== nextContiguousOffset)
              walk.fragmentedClusters++;
            nextContiguousOffset = mapping.hostOffsetBytes + clusterSizeBytes;
          }
          // Clusters of an external data file are not counted in this file's refcounts.
          if (image.hasDataFile) break;
          if (mapping.hostOffsetBytes % clusterSizeBytes !== 0) {
            addIssue(walk, misalignedDataCluster(mapping.hostOffsetBytes, entryOffset));
            break;
          }
          reference(walk, clusterSizeBytes, mapping.hostOffsetBytes, clusterSizeBytes);
          if (isActive) noteCopied(walk, mapping.hostOffsetBytes / clusterSizeBytes, mapping.copied);
          break;
        default:
          break;
      }
    }
  }
}

/** Walks the snapshot table: its clusters and every snapshot's L1 and L2 tables. */
async function walkSnapshots(image: Qcow2Image, walk: Walk, fileSizeBytes: number): Promise<void> {
  const header = image.header;
  if (header.snapshotCount === 0) return;
  const clusterSizeBytes = image.clusterSizeBytes;
  if (
    header.snapshotCount > MAX_SNAPSHOTS ||
    header.snapshotsOffsetBytes % clusterSizeBytes !== 0 ||
    header.snapshotsOffsetBytes >= fileSizeBytes
  ) {
    addIssue(walk, {
      code: 'corruption',
      message: 'snapshot table is invalid',
      offsetBytes: HEADER_FIELD.l1TableOffset + 24,
      fixable: false,
    });
    return;
  }
  let at = header.snapshotsOffsetBytes;
  for (let snapshot = 0; snapshot < header.snapshotCount; snapshot++) {
    const fixed = Buffer.alloc(40);
    if ((await image.file.read(at, fixed)) < 40) break;
    const l1OffsetBytes = Number(fixed.readBigUInt64BE(0));
    const l1EntryCount = fixed.readUInt32BE(8);
    const idBytes = fixed.readUInt16BE(12);
    const nameBytes = fixed.readUInt16BE(14);
    const extraBytes = fixed.readUInt32BE(36);
    at += Math.ceil((40 + extraBytes + idBytes + nameBytes) / 8) * 8;
    if (
      l1EntryCount * 8 > 32 * 1024 * 1024 ||
      l1OffsetBytes % clusterSizeBytes !== 0 ||
      l1OffsetBytes + l1EntryCount * 8 > fileSizeBytes
    ) {
      addIssue(walk, {
        code: 'corruption',
        message: `snapshot ${snapshot} has an invalid L1 table`,
        offsetBytes: l1OffsetBytes,
        fixable: false,
      });
      continue;
    }
    const l1 = Buffer.alloc(l1EntryCount * 8);
    await image.file.read(l1OffsetBytes, l1);
    await walkL1(image, walk, l1, l1OffsetBytes, false);
  }
  reference(walk, clusterSizeBytes, header.snapshotsOffsetBytes, at - header.snapshotsOffsetBytes);
}

/** qemu's QCOW2_MAX_BITMAP_DIRECTORY_SIZE and QCOW2_MAX_BITMAPS. */
const MAX_BITMAP_DIRECTORY_BYTES = 64 * 1024 * 1024;
const MAX_BITMAPS = 65535;

/** Walks persistent dirty bitmaps (when the autoclear bit says they are valid): directory, tables, data clusters. */
async function walkBitmaps(image: Qcow2Image, walk: Walk, fileSizeBytes: number): Promise<void> {
  const header = image.header;
  if ((header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return;
  const extension = header.extensions.find((candidate) => candidate.type === EXT_BITMAPS);
  if (!extension || extension.data.length < 24) return;
  const clusterSizeBytes = image.clusterSizeBytes;
  const bitmapCount = extension.data.readUInt32BE(0);
  const directoryBytes = Number(extension.data.readBigUInt64BE(8));
  const directoryOffsetBytes = Number(extension.data.readBigUInt64BE(16));
  if (
    bitmapCount > MAX_BITMAPS ||
    directoryBytes > MAX_BITMAP_DIRECTORY_BYTES ||
    directoryOffsetBytes + directoryBytes > fileSizeBytes
  ) {
    addIssue(walk, {
      code: 'corruption',
      message: 'bitmap directory is invalid',
      offsetBytes: directoryOffsetBytes,
      fixable: false,
    });
    return;
  }
  reference(walk, clusterSizeBytes, directoryOffsetBytes, directoryBytes);
  const directory = Buffer.alloc(directoryBytes);
  await image.file.read(directoryOffsetBytes, directory);
  let at = 0;
  for (let bitmap = 0; bitmap < bitmapCount && at + 24 <= directory.length; bitmap++) {
    const tableOffsetBytes = Number(directory.readBigUInt64BE(at));
    const tableEntries = directory.readUInt32BE(at + 8);
    const nameBytes = directory.readUInt16BE(at + 18);
    const extraBytes = directory.readUInt32BE(at + 20);
    at += Math.ceil((24 + extraBytes + nameBytes) / 8) * 8;
    if (tableOffsetBytes % clusterSizeBytes !== 0 || tableOffsetBytes + tableEntries * 8 > fileSizeBytes) {
      addIssue(walk, {
        code: 'corruption',
        message: `bitmap ${bitmap} has an invalid table`,
        offsetBytes: tableOffsetBytes,
        fixable: false,
      });
      continue;
    }
    reference(walk, clusterSizeBytes, tableOffsetBytes, tableEntries * 8);
    const table = Buffer.alloc(tableEntries * 8);
    await image.file.read(tableOffsetBytes, table);
    for (let index = 0; index < tableEntries; index++) {
      const dataOffsetBytes = l1Offset(table, index);
      if (dataOffsetBytes !== 0) reference(walk, clusterSizeBytes, dataOffsetBytes, clusterSizeBytes);
    }
  }
}

export async function walkImage(image: Qcow2Image): Promise<Walk> {
  const clusterSizeBytes = image.clusterSizeBytes;
  const fileSizeBytes = await image.file.sizeBytes();
  const fileClusters = Math.ceil(fileSizeBytes / clusterSizeBytes);
  const walk: Walk = {
    fileClusters,
    computed: new Uint32Array(fileClusters),
    copiedSeen: new Uint8Array(fileClusters),
    copiedUnknown: false,
    beyondEnd: new Map(),
    issues: [],
    corruptions: 0,
    checkErrors: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
  reference(walk, clusterSizeBytes, 0, clusterSizeBytes);
  const cryptoHeader = cryptoHeaderRange(image.header);
  if (cryptoHeader) reference(walk, clusterSizeBytes, cryptoHeader.offsetBytes, cryptoHeader.lengthBytes);
  await walkL1(image, walk, image.l1, image.header.l1TableOffsetBytes, true);
  const { offsetBytes: tableOffsetBytes, clusterCount } = image.refcounts.tableLocation;
  reference(walk, clusterSizeBytes, tableOffsetBytes, clusterCount * clusterSizeBytes);
  for (const tableIndex of image.refcounts.allocatedTableIndexes()) {
    const blockOffsetBytes = image.refcounts.blockOffset(tableIndex);
    if (blockOffsetBytes % clusterSizeBytes !== 0) {
      addIssue(walk, {
        code: 'corruption',
        message: `refcount block ${tableIndex} is not cluster aligned`,
        offsetBytes: tableOffsetBytes + tableIndex * 8,
        lengthBytes: 8,
        fixable: false,
      });
      continue;
    }
    if (blockOffsetBytes >= fileSizeBytes) {
      addIssue(walk, {
        code: 'corruption',
        message: `refcount block ${tableIndex} is outside the image`,
        offsetBytes: tableOffsetBytes + tableIndex * 8,
        lengthBytes: 8,
        fixable: false,
      });
      continue;
    }
    reference(walk, clusterSizeBytes, blockOffsetBytes, clusterSizeBytes);
  }
  await walkSnapshots(image, walk, fileSizeBytes);
  await walkBitmaps(image, walk, fileSizeBytes);
  return walk;
}

interface Comparison {
  leaks: number;
  corruptions: number;
  highestCluster: number;
  /** Some active L2 entry's COPIED flag may disagree with the stored refcount (see Walk.copiedSeen). */
  copiedSuspect: boolean;
}

async function compareRefcounts(
  image: Qcow2Image,
  walk: Walk,
  repair: RepairMode,
  fixed: { leaks: number; corruptions: number },
): Promise<Comparison> {
  const clusterSizeBytes = image.clusterSizeBytes;
  const result: Comparison = {
    leaks: 0,
    corruptions: 0,
    highestCluster: -1,
    copiedSuspect: walk.copiedUnknown,
  };
  const copiedSeen = walk.copiedSeen;
  const expected = (clusterIndex: number): number =>
    clusterIndex < walk.fileClusters
      ? (walk.computed[clusterIndex] ?? 0)
      : (walk.beyondEnd.get(clusterIndex) ?? 0);
  // Every cluster of the file, then the referenced ones past its end (no array of all indexes: files
  // can be huge). Clusters whose refcount matches are skipped in a plain loop: check runs cold, and a
  // generator step per cluster cost more than the comparison.
  const beyondEnd = [...walk.beyondEnd.keys()].sort((a, b) => a - b);
  const fileClusters = walk.fileClusters;
  const computedRefcounts = walk.computed;
  let fileIndex = 0;
  let beyondIndex = 0;
  /** The next cluster whose stored refcount differs from the computed one, or -1 at the end. */
  const nextMismatch = async (): Promise<{ clusterIndex: number; stored: number; computed: number } | -1> => {
    const { entriesPerBlock, refcountOrder } = image.refcounts;
    while (fileIndex < fileClusters) {
      // One refcount block at a time (fetched again on every call: a repair may have changed it).
      const blockFirst = fileIndex - (fileIndex % entriesPerBlock);
      const block = await image.refcounts.blockAt(blockFirst / entriesPerBlock);
      const blockEnd = Math.min(fileClusters, blockFirst + entriesPerBlock);
      // The default 16-bit refcounts through a DataView (a builtin, fast when cold); other widths decode.
      const words =
        block && refcountOrder === 4 ? new DataView(block.buffer, block.byteOffset, block.length) : undefined;
      for (; fileIndex < blockEnd; fileIndex++) {
        const clusterIndex = fileIndex;
        const stored = words
          ? words.getUint16((clusterIndex - blockFirst) * 2)
          : block
            ? readRefcountEntry(block, clusterIndex - blockFirst, refcountOrder)
            : 0;
        const computed = computedRefcounts[clusterIndex] ?? 0;
        if (stored > 0 || computed > 0) result.highestCluster = clusterIndex;
        const seen = copiedSeen[clusterIndex] ?? 0;
        if (seen !== 0 && (seen & (stored === 1 ? SEEN_NOT_COPIED : SEEN_COPIED)) !== 0)
          result.copiedSuspect = true;
        if (stored !== computed) {
          fileIndex++;
          return { clusterIndex, stored, computed };
        }
      }
    }
    for (; beyondIndex < beyondEnd.length; beyondIndex++) {
      const clusterIndex = beyondEnd[beyondIndex] ?? 0;
      const stored = image.refcounts.peekRefcount(clusterIndex) ?? (await image.refcounts.get(clusterIndex));
      const computed = expected(clusterIndex);
      if (stored > 0 || computed > 0) result.highestCluster = Math.max(result.highestCluster, clusterIndex);
      if (stored !== computed) {
        beyondIndex++;
        return { clusterIndex, stored, computed };
      }
    }
    return -1;
  };
  if (repair !== 'none') image.refcounts.inUseHint = (clusterIndex) => expected(clusterIndex) > 0;
  try {
    for (let mismatch = await nextMismatch(); mismatch !== -1; mismatch = await nextMismatch()) {
      const { clusterIndex, stored, computed } = mismatch;
      const offsetBytes = clusterIndex * clusterSizeBytes;
      if (stored > computed) {
        if (repair !== 'none') {
          await image.refcounts.set(clusterIndex, computed);
          fixed.leaks++;
          continue;
        }
        result.leaks++;
        if (walk.issues.length < MAX_ISSUES)
          walk.issues.push({
            code: 'leak',
            message: `cluster ${clusterIndex} refcount=${stored} reference=${computed}`,
            offsetBytes,
            lengthBytes: clusterSizeBytes,
            fixable: true,
          });
      } else {
        if (repair === 'all' && clusterIndex < walk.fileClusters) {
          await image.refcounts.set(clusterIndex, Math.min(computed, image.refcounts.maxRefcount));
          fixed.corruptions++;
          continue;
        }
        result.corruptions++;
        if (walk.issues.length < MAX_ISSUES)
          walk.issues.push({
            code: 'corruption',
            message: `cluster ${clusterIndex} refcount=${stored} reference=${computed}`,
            offsetBytes,
            lengthBytes: clusterSizeBytes,
            fixable: clusterIndex < walk.fileClusters,
          });
      }
    }
  } finally {
    image.refcounts.inUseHint = undefined;
  }
  return result;
}

/**
 * COPIED must be set exactly when the refcount is 1 (active L1 and L2 entries; compressed excluded).
 * The L2 entries are visited only with `scanL2` (a repair, or a comparison that found a suspect flag).
 */
async function checkCopiedFlags(
  image: Qcow2Image,
  walk: Walk,
  repair: RepairMode,
  fixed: { corruptions: number },
  scanL2: boolean,
): Promise<number> {
  let wrong = 0;
  const clusterSizeBytes = image.clusterSizeBytes;
  const fix = repair === 'all';
  const standard = !image.extendedL2 && !image.hasDataFile;
  let l1Changed = false;
  for (let l1Index = 0; l1Index < image.l1EntryCount; l1Index++) {
    const l2OffsetBytes = l1Offset(image.l1, l1Index);
    if (
      l2OffsetBytes === 0 ||
      l2OffsetBytes % clusterSizeBytes !== 0 ||
      l2OffsetBytes / clusterSizeBytes >= walk.fileClusters
    )
      continue;
    const l2Refcount = await image.refcounts.get(l2OffsetBytes / clusterSizeBytes);
    if ((l2Refcount === 1) !== l1Copied(image.l1, l1Index)) {
      if (fix && l2Refcount > 0) {
        writeEntry(image.l1, l1Index, l2OffsetBytes, l2Refcount === 1);
        l1Changed = true;
        fixed.corruptions++;
      } else {
        wrong++;
        addIssue(walk, {
          code: 'corruption',
          message: `OFLAG_COPIED L2 cluster: l1_index=${l1Index} refcount=${l2Refcount}`,
          offsetBytes: image.header.l1TableOffsetBytes + l1Index * 8,
          lengthBytes: 8,
          fixable: true,
        });
      }
    }
    if (!scanL2) continue;
    const table = await image.l2Cache.get(l2OffsetBytes);
    let tableChanged = false;
    for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
      if (isEmptyEntry(table, l2Index, image.extendedL2)) continue;
      if (standard) {
        // The common answer (flag right, or nothing to check) from the entry's words; anything else
        // is decoded below.
        const high = table.readUInt32BE(l2Index * 8);
        if ((high & OFLAG_COMPRESSED_HIGH) !== 0) continue;
        const hostOffsetBytes = l1Offset(table, l2Index);
        if (hostOffsetBytes === 0 || hostOffsetBytes % clusterSizeBytes !== 0) continue;
        const hostCluster = hostOffsetBytes / clusterSizeBytes;
        const refcount =
          image.refcounts.peekRefcount(hostCluster) ?? (await image.refcounts.get(hostCluster));
        if ((refcount === 1) === ((high & OFLAG_COPIED_HIGH) !== 0)) continue;
      }
      const mapping = decodeL2(table, l2Index, image.clusterBits, image.extendedL2);
      if (mapping.kind !== 'normal' && mapping.kind !== 'zero-alloc') continue;
      if (mapping.hostOffsetBytes % clusterSizeBytes !== 0 || image.hasDataFile) continue;
      const hostCluster = mapping.hostOffsetBytes / clusterSizeBytes;
      const refcount = image.refcounts.peekRefcount(hostCluster) ?? (await image.refcounts.get(hostCluster));
      if ((refcount === 1) === mapping.copied) continue;
      if (fix && refcount > 0) {
        image.entryCopied(
          mapping.hostOffsetBytes,
          refcount === 1,
          mapping.kind === 'zero-alloc',
        )(table, l2Index);
        tableChanged = true;
        fixed.corruptions++;
      } else {
        wrong++;
        addIssue(walk, {
          code: 'corruption',
          message: `OFLAG_COPIED data cluster: l2_entry at ${l2OffsetBytes + l2Index * 8} refcount=${refcount}`,
          offsetBytes: l2OffsetBytes + l2Index * 8,
          lengthBytes: 8,
          fixable: true,
        });
      }
    }
    if (tableChanged) image.l2Cache.markDirty(l2OffsetBytes);
  }
  if (l1Changed) await image.file.write(image.header.l1TableOffsetBytes, image.l1);
  return wrong;
}

async function runCheck(image: Qcow2Image, repair: RepairMode): Promise<CheckReport> {
  const fixed = { leaks: 0, corruptions: 0 };
  let walk = await walkImage(image);
  let comparison = await compareRefcounts(image, walk, repair, fixed);
  await checkCopiedFlags(image, walk, repair, fixed, repair !== 'none' || comparison.copiedSuspect);
  if (fixed.leaks + fixed.corruptions > 0) {
    // Repairs may have allocated refcount blocks: write everything, then check again as qemu-img does.
    await image.refcounts.flush();
    await image.l2Cache.flush();
    await image.file.sync();
    walk = await walkImage(image);
    comparison = await compareRefcounts(image, walk, 'none', { leaks: 0, corruptions: 0 });
    await checkCopiedFlags(image, walk, 'none', { corruptions: 0 }, comparison.copiedSuspect);
  }
  const totalClusters = Math.ceil(image.header.virtualSizeBytes / image.clusterSizeBytes);
  return {
    issues: walk.issues,
    leaks: comparison.leaks,
    corruptions: walk.corruptions + comparison.corruptions,
    checkErrors: walk.checkErrors,
    leaksFixed: fixed.leaks,
    corruptionsFixed: fixed.corruptions,
    imageEndOffsetBytes: (comparison.highestCluster + 1) * image.clusterSizeBytes,
    totalClusters,
    allocatedClusters: walk.allocatedClusters,
    fragmentedClusters: walk.fragmentedClusters,
    compressedClusters: walk.compressedClusters,
  };
}

/** qemu-img check for qcow2: counts leaks and corruptions as qemu does; repairs per `repair`. */
export async function checkQcow2(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  const image = await loadImage(
    { ...context, readOnly: repair === 'none' ? true : context.readOnly },
    async () => undefined,
    { allowCorrupt: true },
  );
  return runCheck(image, repair);
}

/** Rebuilds refcounts of a dirty (lazy_refcounts) image opened writable, as qemu does on open. */
export async function rebuildRefcounts(image: Qcow2Image): Promise<void> {
  await runCheck(image, 'all');
}
