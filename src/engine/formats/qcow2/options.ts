// qcow2 create options as qemu-img names them (size, compat, cluster_size, refcount_bits, ...), their
// defaults, and validation with qemu's rules and messages; shared by create and measure.
// Spec: qemu's qcow2_create_opts list and qcow2_co_create_opts checks (block/qcow2.c).

import { InvalidOptionError } from '../../errors.ts';
import { parseSize } from '../../size.ts';
import type { CreateOptionSpec } from '../driver.ts';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from './compress.ts';
import { QCOW2_MAX_L1_BYTES } from './header.ts';

export const QCOW2_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  {
    name: 'compat',
    type: 'enum',
    values: ['0.10', '1.1', 'v2', 'v3'],
    default: '1.1',
    help: 'Compatibility level (v2 = 0.10, v3 = 1.1)',
  },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  {
    name: 'data_file',
    type: 'string',
    help: "File name of an external data file (relative names are resolved against the image's folder)",
  },
  {
    name: 'data_file_raw',
    type: 'bool',
    default: false,
    help: 'The external data file is a valid raw image (every cluster mapped at its guest offset)',
  },
  {
    name: 'cluster_size',
    type: 'size',
    default: 65536,
    help: 'qcow2 cluster size (512 to 2M, a power of two)',
  },
  {
    name: 'preallocation',
    type: 'enum',
    values: ['off', 'metadata', 'falloc', 'full'],
    default: 'off',
    help: 'Preallocation mode',
  },
  {
    name: 'lazy_refcounts',
    type: 'bool',
    default: false,
    help: 'Postpone refcount updates (compat=1.1 only)',
  },
  {
    name: 'refcount_bits',
    type: 'number',
    values: ['1', '2', '4', '8', '16', '32', '64'],
    default: 16,
    help: 'Width of a reference count entry in bits',
  },
  {
    name: 'compression_type',
    type: 'enum',
    values: ['zlib', 'zstd'],
    default: 'zlib',
    help: 'Compression method used for image cluster compression',
  },
  {
    name: 'extended_l2',
    type: 'bool',
    default: false,
    help: 'Extended L2 tables (32 subclusters per cluster; clusters of at least 16 KiB)',
  },
];

export interface Qcow2CreateSettings {
  sizeBytes: number;
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  compressionType: number;
  /** 16-byte L2 entries with subcluster bitmaps. */
  extendedL2: boolean;
  backingFile?: string;
  backingFormat?: string;
}

function parseBool(option: string, value: string): boolean {
  if (value === 'on' || value === 'true' || value === 'yes') return true;
  if (value === 'off' || value === 'false' || value === 'no') return false;
  throw new InvalidOptionError({ option, value, message: `Parameter '${option}' expects 'on' or 'off'` });
}

/** Validates `-o` options as qemu does; throws InvalidOptionError (VDISK_EINVAL) naming the option. */
export function parseCreateSettings(
  sizeBytes: number,
  options: Record<string, string>,
  backingFile?: string,
  backingFormat?: string,
): Qcow2CreateSettings {
  const known = new Set(QCOW2_CREATE_OPTIONS.map((spec) => spec.name));
  for (const key of Object.keys(options)) {
    if (!known.has(key))
      throw new InvalidOptionError({
        option: key,
        value: options[key],
        message: `Invalid parameter '${key}' for qcow2`,
      });
  }
  const compat = options.compat ?? '1.1';
  let version: 2 | 3;
  if (compat === '0.10' || compat === 'v2') version = 2;
  else if (compat === '1.1' || compat === 'v3') version = 3;
  else
    throw new InvalidOptionError({
      option: 'compat',
      value: compat,
      message: `Invalid compatibility level: '${compat}'`,
    });
  const clusterSizeBytes =
    options.cluster_size === undefined ? 65536 : parseSize(options.cluster_size, 'cluster_size');
  const clusterBits = Math.log2(clusterSizeBytes);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
    throw new InvalidOptionError({
      option: 'cluster_size',
      value: options.cluster_size,
      message: 'Cluster size must be a power of two between 512 and 2048k',
    });
  }
  const refcountBits = options.refcount_bits === undefined ? 16 : Number(options.refcount_bits);
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    throw new InvalidOptionError({
      option: 'refcount_bits',
      value: options.refcount_bits,
      message: 'Refcount width must be a power of two and may not exceed 64 bits',
    });
  }
  if (version === 2 && refcountBits !== 16) {
    throw new InvalidOptionError({
      option: 'refcount_bits',
      value: options.refcount_bits,
      message:
        'Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
    });
  }
  const lazyRefcounts =
    options.lazy_refcounts === undefined ? false : parseBool('lazy_refcounts', options.lazy_refcounts);
  if (lazyRefcounts && version === 2) {
    throw new InvalidOptionError({
      option: 'lazy_refcounts',
      value: options.lazy_refcounts,
      message:
        'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
    });
  }
  const preallocation = (options.preallocation ?? 'off') as Qcow2CreateSettings['preallocation'];
  if (!['off', 'metadata', 'falloc', 'full'].includes(preallocation)) {
    throw new InvalidOptionError({
      option: 'preallocation',
      value: preallocation,
      message: `Invalid preallocation mode: '${preallocation}'`,
    });
  }
  if (preallocation !== 'off' && backingFile && options.extended_l2 !== 'on') {
    throw new InvalidOptionError({
      option: 'preallocation',
      value: preallocation,
      message: 'Backing file and preallocation can only be used at the same time if extended_l2 is on',
    });
  }
  const compressionName = options.compression_type ?? 'zlib';
  if (compressionName !== 'zlib' && compressionName !== 'zstd') {
    throw new InvalidOptionError({
      option: 'compression_type',
      value: compressionName,
      message: `Invalid parameter '${compressionName}'`,
    });
  }
  if (compressionName === 'zstd' && version === 2) {
    throw new InvalidOptionError({
      option: 'compression_type',
      value: compressionName,
      message:
        'Non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
    });
  }
  const extendedL2 = options.extended_l2 !== undefined && parseBool('extended_l2', options.extended_l2);
  if (extendedL2 && version === 2) {
    throw new InvalidOptionError({
      option: 'extended_l2',
      value: options.extended_l2,
      message:
        'Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
    });
  }
  if (extendedL2 && clusterSizeBytes < 16384) {
    throw new InvalidOptionError({
      option: 'extended_l2',
      value: options.extended_l2,
      message: 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes',
    });
  }
  if (backingFormat && !backingFile) {
    throw new InvalidOptionError({
      option: 'backing_fmt',
      value: backingFormat,
      message: 'Backing format cannot be used without backing file',
    });
  }
  // qemu rounds the virtual size up to whole 512-byte sectors.
  const roundedSize = Math.ceil(sizeBytes / 512) * 512;
  const l2Coverage = clusterSizeBytes * (clusterSizeBytes / (extendedL2 ? 16 : 8));
  if (Math.ceil(roundedSize / l2Coverage) * 8 > QCOW2_MAX_L1_BYTES) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: 'Could not resize image: Image size is too big for this cluster size',
    });
  }
  return {
    sizeBytes: roundedSize,
    version,
    clusterBits,
    refcountOrder,
    lazyRefcounts,
    preallocation,
    compressionType: compressionName === 'zstd' ? COMPRESSION_ZSTD : COMPRESSION_ZLIB,
    extendedL2,
    backingFile,
    backingFormat,
  };
}
