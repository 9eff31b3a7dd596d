// qemu-img amend for qcow2 (qemu's qcow2_amend_options and qcow2_downgrade): compat=0.10|1.1,
// lazy_refcounts=on|off, refcount_bits (refcount-order.ts) and size on an existing image. Downgrading to
// version 2 refuses what v2 cannot express, as qemu does, and first turns zero clusters (a v3 feature)
// into what v2 reads the same way.
// backing_file/backing_fmt may only repeat the current values (qemu 7.2: use rebase). qcow2.txt "Header".

import { InvalidOptionError } from '../../errors.ts';
import { parseSize } from '../../size.ts';
import { rewriteHeaderCluster } from './backing.ts';
import { prepareDataFileAmend } from './data-file.ts';
import { decodeL2, l1Offset } from './cluster-map.ts';
import {
  COMPAT_LAZY_REFCOUNTS,
  EXT_BITMAPS,
  EXT_FEATURE_TABLE,
  encodeFeatureTable,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  QCOW2_V3_HEADER_BYTES,
  QEMU_FEATURE_NAMES,
  type Qcow2Header,
} from './header.ts';
import type { Qcow2Image } from './image.ts';
import { QCOW2_CREATE_OPTIONS } from './options.ts';
import { growImage, shrinkImage } from './resize.ts';
import { readSnapshotTable } from './snapshot.ts';
import { changeRefcountOrder } from './refcount-order.ts';

const AMENDABLE = new Set([
  'compat',
  'lazy_refcounts',
  'refcount_bits',
  'backing_file',
  'backing_fmt',
  'size',
  'data_file',
  'data_file_raw',
]);

function invalid(option: string, value: string | undefined, message: string): InvalidOptionError {
  return new InvalidOptionError({ option, value, message });
}

function parseOnOff(option: string, value: string): boolean {
  if (['on', 'true', 'yes'].includes(value)) return true;
  if (['off', 'false', 'no'].includes(value)) return false;
  throw invalid(option, value, `Parameter '${option}' expects 'on' or 'off'`);
}

/** Validated amend request: the target version and lazy-refcounts setting (undefined = unchanged). */
function parseAmendOptions(
  image: Qcow2Image,
  options: Record<string, string>,
): { version: 2 | 3; lazyRefcounts: boolean | undefined; refcountOrder: number; sizeBytes: number } {
  const header = image.header;
  for (const key of Object.keys(options)) {
    if (AMENDABLE.has(key)) continue;
    const createOnly = QCOW2_CREATE_OPTIONS.some((option) => option.name === key);
    throw invalid(
      key,
      options[key],
      createOnly
        ? `Invalid parameter '${key}'\nThis option is only supported for image creation`
        : `Invalid parameter '${key}'`,
    );
  }
  let version: 2 | 3 = header.version;
  const compat = options.compat;
  if (compat !== undefined) {
    if (compat === '0.10' || compat === 'v2') version = 2;
    else if (compat === '1.1' || compat === 'v3') version = 3;
    else throw invalid('compat', compat, `Unknown compatibility level ${compat}`);
  }
  const backingFile = options.backing_file;
  const backingFormat = options.backing_fmt;
  if (
    (backingFile !== undefined && backingFile !== (header.backingFileName ?? '')) ||
    (backingFormat !== undefined && backingFormat !== (header.backingFormat ?? ''))
  ) {
    throw invalid(
      'backing_file',
      backingFile ?? backingFormat,
      "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
    );
  }
  const lazyRefcounts =
    options.lazy_refcounts === undefined ? undefined : parseOnOff('lazy_refcounts', options.lazy_refcounts);
  if (lazyRefcounts && version < 3) {
    throw invalid(
      'lazy_refcounts',
      options.lazy_refcounts,
      'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
    );
  }
  let refcountOrder = header.refcountOrder;
  const refcountBits = options.refcount_bits;
  if (refcountBits !== undefined) {
    const bits = Number(refcountBits);
    if (!/^\d+$/.test(refcountBits) || bits < 1 || bits > 64 || (bits & (bits - 1)) !== 0)
      throw invalid(
        'refcount_bits',
        refcountBits,
        'Refcount width must be a power of two and may not exceed 64 bits',
      );
    refcountOrder = Math.log2(bits);
    if (version < 3 && refcountOrder !== 4)
      throw invalid(
        'refcount_bits',
        refcountBits,
        'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
      );
  }
  if (version === 2 && header.version === 3 && refcountOrder !== 4)
    throw invalid('compat', compat, 'compat=0.10 requires refcount_bits=16');
  let sizeBytes = header.virtualSizeBytes;
  if (options.size !== undefined) {
    sizeBytes = parseSize(options.size, 'size');
    if (sizeBytes % 512 !== 0) throw invalid('size', options.size, 'The new size must be a multiple of 512');
  }
  return { version, lazyRefcounts, refcountOrder, sizeBytes };
}

/** Whether the active table has compressed clusters (a zstd image cannot become v2 with them). */
async function hasCompressedClusters(image: Qcow2Image): Promise<boolean> {
  const clusterCount = Math.ceil(image.header.virtualSizeBytes / image.clusterSizeBytes);
  for (let guestCluster = 0; guestCluster < clusterCount; ) {
    const { mapping, l2OffsetBytes } = await image.lookup(guestCluster);
    if (l2OffsetBytes === 0) {
      guestCluster += image.clustersLeftInL2(guestCluster);
      continue;
    }
    if (mapping.kind === 'compressed') return true;
    guestCluster += 1;
  }
  return false;
}

/**
 * Rewrites zero clusters so a v2 reader sees zeros, in the active table and every snapshot's (qemu's
 * qcow2_expand_zero_clusters): without a backing file an unallocated entry does; with one, a data cluster
 * of zeros is needed. Each L2 table is rewritten once, in place, even when shared: a table with refcount
 * r is named by r L1 tables, so a new data cluster gets refcount r and a replaced one loses r. New
 * clusters and their refcounts are written and synced before the L2 tables that name them (flush order),
 * and old references are dropped only after (deferred frees), so a crash leaks and never corrupts.
 */
async function expandZeroClusters(image: Qcow2Image): Promise<void> {
  const hasBacking = image.header.backingFileName !== undefined && image.header.backingFileName !== '';
  const clusterSizeBytes = image.clusterSizeBytes;
  const zeros = Buffer.alloc(clusterSizeBytes);
  const l1Tables: Buffer[] = [image.l1];
  for (const entry of await readSnapshotTable(image)) {
    const l1 = Buffer.alloc(entry.l1EntryCount * 8);
    await image.file.read(entry.l1OffsetBytes, l1);
    l1Tables.push(l1);
  }
  const done = new Set<number>();
  for (const l1 of l1Tables) {
    for (let l1Index = 0; l1Index < l1.length / 8; l1Index++) {
      const l2OffsetBytes = l1Offset(l1, l1Index);
      if (l2OffsetBytes === 0 || done.has(l2OffsetBytes)) continue;
      done.add(l2OffsetBytes);
      if (l2OffsetBytes % clusterSizeBytes !== 0)
        throw image.corrupt(`L2 table offset ${l2OffsetBytes} is not cluster aligned`, undefined, 8);
      const sharers = await image.refcounts.get(l2OffsetBytes / clusterSizeBytes);
      const table = await image.l2Cache.get(l2OffsetBytes);
      let changed = false;
      for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
        const mapping = decodeL2(table, l2Index, image.clusterBits, image.extendedL2);
        if (mapping.kind !== 'zero-plain' && mapping.kind !== 'zero-alloc') continue;
        changed = true;
        const dropOld = (): void => {
          if (mapping.kind !== 'zero-alloc') return;
          for (let count = 0; count < sharers; count++) image.releaseMapping(mapping);
        };
        if (!hasBacking) {
          image.entryUnallocated()(table, l2Index);
          dropOld();
          continue;
        }
        let hostOffsetBytes = 0;
        if (
          mapping.kind === 'zero-alloc' &&
          (await image.refcounts.get(mapping.hostOffsetBytes / clusterSizeBytes)) === sharers
        ) {
          // Only this table's owners name the cluster: zero it in place.
          hostOffsetBytes = mapping.hostOffsetBytes;
        } else {
          hostOffsetBytes = (await image.refcounts.allocateClusters(1)) * clusterSizeBytes;
          if (sharers > 1) await image.refcounts.set(hostOffsetBytes / clusterSizeBytes, sharers);
          dropOld();
        }
        await image.file.write(hostOffsetBytes, zeros);
        image.entryCopied(hostOffsetBytes, sharers === 1, false)(table, l2Index);
      }
      if (changed) image.l2Cache.markDirty(l2OffsetBytes);
    }
  }
  await image.flush();
}

/** The header of the same image as version 2 (no feature bits, extensions v2 does not have dropped). */
function headerV2(header: Qcow2Header): Qcow2Header {
  return {
    ...header,
    version: 2,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLengthBytes: 72,
    compressionType: 0,
    extensions: header.extensions.filter((extension) => extension.type !== EXT_FEATURE_TABLE),
    featureNames: [],
  };
}

/** The header of the same v2 image as version 3, with qemu's feature-name table as qemu adds it. */
function headerV3(header: Qcow2Header): Qcow2Header {
  return {
    ...header,
    version: 3,
    refcountOrder: 4,
    headerLengthBytes: QCOW2_V3_HEADER_BYTES,
    compressionType: 0,
    extensions: [
      ...header.extensions.filter((extension) => extension.type !== EXT_FEATURE_TABLE),
      { type: EXT_FEATURE_TABLE, data: encodeFeatureTable(QEMU_FEATURE_NAMES) },
    ],
    featureNames: [...QEMU_FEATURE_NAMES],
  };
}

/**
 * Applies `-o` amend options to an open, writable qcow2 image. Throws InvalidOptionError (VDISK_EINVAL)
 * for unknown, create-only or conflicting options and for a downgrade v2 cannot express (qemu's
 * wording), and CorruptImageError from the metadata walks. After a refcount_bits change the device must be closed, not written.
 */
export async function amendQcow2(image: Qcow2Image, options: Record<string, string>): Promise<void> {
  const { version, lazyRefcounts, refcountOrder, sizeBytes } = parseAmendOptions(image, options);
  const dataFileChange = await prepareDataFileAmend(image, options);
  const downgrade = version === 2 && image.header.version === 3;
  // Every refusal comes before the first write, so a refused amend leaves the image as it was.
  if (downgrade) await checkDowngrade(image, options.compat);
  let header = image.header;
  if (version === 3 && header.version === 2) {
    await rewriteHeaderCluster(image, headerV3(header));
    header = image.header;
  }
  if (lazyRefcounts !== undefined && header.version === 3) {
    const compatibleFeatures = lazyRefcounts
      ? header.compatibleFeatures | COMPAT_LAZY_REFCOUNTS
      : header.compatibleFeatures & ~COMPAT_LAZY_REFCOUNTS;
    if (compatibleFeatures !== header.compatibleFeatures)
      await rewriteHeaderCluster(image, { ...header, compatibleFeatures });
  }
  // qemu's amend resizes without --shrink: data past a smaller size is dropped.
  if (sizeBytes > image.header.virtualSizeBytes) await growImage(image, sizeBytes);
  else if (sizeBytes < image.header.virtualSizeBytes) await shrinkImage(image, sizeBytes, true);
  // Zero clusters are expanded with the current refcount structures, before any width change: after
  // one, the in-memory refcount state is stale and nothing may allocate.
  if (downgrade) await expandZeroClusters(image);
  if (refcountOrder !== image.header.refcountOrder) await changeRefcountOrder(image, refcountOrder);
  if (downgrade) await rewriteHeaderCluster(image, headerV2(image.header));
  if (dataFileChange) await dataFileChange();
}

/** qcow2_downgrade's refusals: what a version 2 image cannot express. */
async function checkDowngrade(image: Qcow2Image, compat: string | undefined): Promise<void> {
  const header = image.header;
  if (header.incompatibleFeatures & INCOMPAT_DATA_FILE)
    throw invalid('compat', compat, 'Cannot downgrade an image with a data file');
  const blocking = header.incompatibleFeatures & ~INCOMPAT_DIRTY & ~INCOMPAT_COMPRESSION;
  if (blocking !== 0n)
    throw invalid(
      'compat',
      compat,
      `Cannot downgrade an image with incompatible features 0x${blocking.toString(16)} set`,
    );
  if (header.compressionType !== 0 && (await hasCompressedClusters(image)))
    throw invalid(
      'compat',
      compat,
      'Cannot downgrade an image with zstd compression type and existing compressed clusters',
    );
  if (header.extensions.some((extension) => extension.type === EXT_BITMAPS))
    throw invalid('compat', compat, 'Cannot downgrade an image with bitmaps');
}
