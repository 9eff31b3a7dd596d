// qemu-img amend for qcow2 (qemu's qcow2_amend_options and qcow2_downgrade): compat=0.10|1.1,
// lazy_refcounts=on|off and refcount_bits (refcount-order.ts) on an existing image. Downgrading to
// version 2 refuses what v2 cannot express, as qemu does, and first turns zero clusters (a v3 feature)
// into what v2 reads the same way.
// backing_file/backing_fmt may only repeat the current values (qemu 7.2: use rebase). qcow2.txt "Header".

import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { rewriteHeaderCluster } from './backing.ts';
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
import { readSnapshotTable } from './snapshot.ts';
import { changeRefcountOrder } from './refcount-order.ts';

const AMENDABLE = new Set(['compat', 'lazy_refcounts', 'refcount_bits', 'backing_file', 'backing_fmt']);

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
): { version: 2 | 3; lazyRefcounts: boolean | undefined; refcountOrder: number } {
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
  return { version, lazyRefcounts, refcountOrder };
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
 * Rewrites zero clusters so a v2 reader sees zeros: without a backing file an unallocated cluster does;
 * with one, a data cluster of zeros is needed. Data clusters are written and synced (flush) before the L2
 * entries that name them (qemu's qcow2_expand_zero_clusters, active table only).
 */
async function expandZeroClusters(image: Qcow2Image): Promise<void> {
  const hasBacking = image.header.backingFileName !== undefined && image.header.backingFileName !== '';
  const clusterCount = Math.ceil(image.header.virtualSizeBytes / image.clusterSizeBytes);
  const zeros = Buffer.alloc(image.clusterSizeBytes);
  for (let guestCluster = 0; guestCluster < clusterCount; ) {
    const { mapping, l2OffsetBytes } = await image.lookup(guestCluster);
    if (l2OffsetBytes === 0) {
      guestCluster += image.clustersLeftInL2(guestCluster);
      continue;
    }
    if (mapping.kind === 'zero-plain' || mapping.kind === 'zero-alloc') {
      const l2Writable = await image.writableL2(guestCluster);
      const l2Index = guestCluster % image.l2EntryCount;
      if (!hasBacking) {
        await image.setL2Entry(l2Writable, l2Index, image.entryUnallocated());
        image.releaseMapping(mapping);
      } else {
        // A zero-alloc cluster another table (a snapshot's) also names keeps its bytes there: use a new one.
        let hostOffsetBytes = 0;
        if (mapping.kind === 'zero-alloc') {
          if ((await image.refcounts.get(mapping.hostOffsetBytes / image.clusterSizeBytes)) === 1)
            hostOffsetBytes = mapping.hostOffsetBytes;
          else image.releaseMapping(mapping);
        }
        if (hostOffsetBytes === 0)
          hostOffsetBytes = (await image.refcounts.allocateClusters(1)) * image.clusterSizeBytes;
        await image.file.write(hostOffsetBytes, zeros);
        await image.setL2Entry(l2Writable, l2Index, image.entryNormal(hostOffsetBytes));
      }
    }
    guestCluster += 1;
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
 * wording), UnsupportedError (VDISK_ENOTSUP) for what vdisk does not do (downgrading an image whose
 * internal snapshots hold zero clusters). After a refcount_bits change the device must be closed, not written.
 */
export async function amendQcow2(image: Qcow2Image, options: Record<string, string>): Promise<void> {
  const { version, lazyRefcounts, refcountOrder } = parseAmendOptions(image, options);
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
  // Zero clusters are expanded with the current refcount structures, before any width change: after
  // one, the in-memory refcount state is stale and nothing may allocate.
  if (downgrade) await expandZeroClusters(image);
  if (refcountOrder !== image.header.refcountOrder) await changeRefcountOrder(image, refcountOrder);
  if (downgrade) await rewriteHeaderCluster(image, headerV2(image.header));
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
  if (await snapshotsHaveZeroClusters(image))
    throw new UnsupportedError({
      format: 'qcow2',
      feature: 'downgrading an image whose snapshots have zero clusters',
      message: `${image.path}: vdisk amend cannot downgrade to compat=0.10: internal snapshots hold zero clusters (vdisk expands them in the active image only)`,
    });
}

/** Whether any snapshot's L2 tables hold zero entries (v2 cannot express them; vdisk does not expand those). */
async function snapshotsHaveZeroClusters(image: Qcow2Image): Promise<boolean> {
  for (const entry of await readSnapshotTable(image)) {
    const l1 = Buffer.alloc(entry.l1EntryCount * 8);
    await image.file.read(entry.l1OffsetBytes, l1);
    for (let l1Index = 0; l1Index < entry.l1EntryCount; l1Index++) {
      const l2OffsetBytes = l1Offset(l1, l1Index);
      if (l2OffsetBytes === 0) continue;
      if (l2OffsetBytes % image.clusterSizeBytes !== 0)
        throw image.corrupt(
          `snapshot '${entry.name}' names an unaligned L2 table`,
          entry.l1OffsetBytes + l1Index * 8,
          8,
        );
      const table = await image.l2Cache.get(l2OffsetBytes);
      for (let l2Index = 0; l2Index < image.l2EntryCount; l2Index++) {
        const kind = decodeL2(table, l2Index, image.clusterBits, image.extendedL2).kind;
        if (kind === 'zero-plain' || kind === 'zero-alloc') return true;
      }
    }
  }
  return false;
}
