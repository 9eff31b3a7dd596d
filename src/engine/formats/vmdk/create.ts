// Creating VMDKs as qemu-img 7.2 does (block/vmdk.c vmdk_co_do_create, vmdk_init_extent): the same
// subformats and file names (x-flat.vmdk, x-s001.vmdk, x-f001.vmdk), header fields, preallocated grain
// tables with a redundant copy, and descriptor text; options adapter_type, hwversion, compat6, ...

import { randomInt } from '../../lazy-crypto.ts';
import { basename, dirname, extname, join } from 'node:path';
import type { BlockDevice } from '../../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../../errors.ts';
import { type HostFile, NodeHostFile } from '../../io/host-file.ts';
import type { CreateContext, CreateOptionSpec } from '../driver.ts';
import { buildDescriptor, type ExtentLine } from './descriptor.ts';
import { openVmdk } from './open.ts';
import {
  buildSparseHeader,
  COMPRESSION_DEFLATE,
  FLAG_COMPRESS,
  FLAG_MARKER,
  FLAG_NL_DETECT,
  FLAG_RGD,
  FLAG_ZERO_GRAIN,
  SECTOR_BYTES,
} from './sparse-header.ts';

export const VMDK_SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
] as const;
const ADAPTER_TYPES = ['ide', 'lsilogic', 'buslogic', 'legacyESX'];
/** twoGbMaxExtent* split size, as qemu's. */
export const SPLIT_EXTENT_BYTES = 2 * 1024 * 1024 * 1024;
const GRAIN_SECTORS = 128;
const GTES_PER_GT = 512;
const DESCRIPTOR_OFFSET_SECTORS = 1;
const DESCRIPTOR_SECTORS = 20;

export const vmdkCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  {
    name: 'adapter_type',
    type: 'enum',
    values: ADAPTER_TYPES,
    default: 'ide',
    help: 'Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX',
  },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: "Must be 'vmdk' if present" },
  { name: 'compat6', type: 'bool', default: false, help: 'VMDK version 6 image' },
  { name: 'hwversion', type: 'string', default: '4', help: 'VMDK hardware version' },
  { name: 'toolsversion', type: 'string', default: '2147483647', help: 'VMware guest tools version' },
  {
    name: 'subformat',
    type: 'enum',
    values: VMDK_SUBFORMATS,
    default: 'monolithicSparse',
    help: 'VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized}',
  },
  {
    name: 'zeroed_grain',
    type: 'bool',
    default: false,
    help: 'Enable efficient zero writes using the zeroed-grain GTE feature',
  },
];

function parseBool(options: Record<string, string>, name: string): boolean {
  const value = options[name];
  if (value === undefined || value === 'off' || value === 'false') return false;
  if (value === 'on' || value === 'true') return true;
  throw new InvalidOptionError({ option: name, value, message: `Parameter '${name}' expects 'on' or 'off'` });
}

/** Writes a sparse extent of `sizeBytes` into `file`: header, redundant GD+GTs, GD+GTs, optional descriptor. */
export async function writeSparseExtent(
  file: HostFile,
  sizeBytes: number,
  compressed: boolean,
  zeroedGrain: boolean,
  descriptorText?: string,
): Promise<void> {
  const capacitySectors = sizeBytes / SECTOR_BYTES;
  const grains = Math.ceil(capacitySectors / GRAIN_SECTORS);
  const gtSectors = Math.ceil((GTES_PER_GT * 4) / SECTOR_BYTES);
  const gtCount = Math.ceil(grains / GTES_PER_GT);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR_BYTES);
  const rgdOffsetSectors = DESCRIPTOR_OFFSET_SECTORS + DESCRIPTOR_SECTORS;
  const gdOffsetSectors = rgdOffsetSectors + gdSectors + gtSectors * gtCount;
  const grainOffsetSectors =
    Math.ceil((gdOffsetSectors + gdSectors + gtSectors * gtCount) / GRAIN_SECTORS) * GRAIN_SECTORS;
  const header = buildSparseHeader({
    version: compressed ? 3 : zeroedGrain ? 2 : 1,
    flags:
      FLAG_RGD |
      FLAG_NL_DETECT |
      (compressed ? FLAG_COMPRESS | FLAG_MARKER : 0) |
      (zeroedGrain ? FLAG_ZERO_GRAIN : 0),
    capacitySectors,
    grainSectors: GRAIN_SECTORS,
    descriptorOffsetSectors: DESCRIPTOR_OFFSET_SECTORS,
    descriptorSectors: DESCRIPTOR_SECTORS,
    gtesPerGt: GTES_PER_GT,
    redundantGdOffsetSectors: rgdOffsetSectors,
    gdOffsetSectors,
    overheadSectors: grainOffsetSectors,
    compressAlgorithm: compressed ? COMPRESSION_DEFLATE : 0,
  });
  await file.write(0, header);
  await file.truncate(grainOffsetSectors * SECTOR_BYTES);
  // Each directory points at its own run of tables, right after it; written in bounded chunks.
  for (const directorySectors of [rgdOffsetSectors, gdOffsetSectors]) {
    const chunkEntries = 128 * 1024;
    for (let first = 0; first < gtCount; first += chunkEntries) {
      const count = Math.min(chunkEntries, gtCount - first);
      const chunk = Buffer.alloc(count * 4);
      for (let i = 0; i < count; i++)
        chunk.writeUInt32LE(directorySectors + gdSectors + (first + i) * gtSectors, i * 4);
      await file.write(directorySectors * SECTOR_BYTES + first * 4, chunk);
    }
  }
  if (descriptorText !== undefined) {
    const bytes = Buffer.from(descriptorText, 'latin1');
    if (bytes.length > DESCRIPTOR_SECTORS * SECTOR_BYTES) {
      throw new InvalidOptionError({
        option: 'backing_file',
        message: 'the descriptor does not fit its 20 sectors (backing file name too long?)',
      });
    }
    await file.write(DESCRIPTOR_OFFSET_SECTORS * SECTOR_BYTES, bytes);
  }
}

async function parentCidOf(context: CreateContext, backingFile: string): Promise<number> {
  let parent: BlockDevice;
  if (context.openBacking) {
    parent = await context.openBacking(backingFile, 'vmdk');
  } else {
    const path = backingFile.startsWith('/') ? backingFile : join(dirname(context.path), backingFile);
    const file = await NodeHostFile.open(path, { readOnly: true });
    parent = await openVmdk({ path, file, readOnly: true, openBacking: undefined, options: {} }).catch(
      async (err) => {
        await file.close();
        throw err;
      },
    );
  }
  try {
    const info = await parent.info();
    const cid = info.formatSpecific?.type === 'vmdk' ? info.formatSpecific.data.cid : undefined;
    if (typeof cid !== 'number') {
      throw new InvalidOptionError({
        option: 'backing_fmt',
        value: info.format,
        message: `Invalid backing file format '${info.format}'. Only vmdk is supported.`,
      });
    }
    return cid;
  } finally {
    await parent.close();
  }
}

/** Creates a VMDK of `context.sizeBytes` (rounded up to a sector) in the subformat `-o subformat` names. */
export async function createVmdk(context: CreateContext): Promise<void> {
  const options = context.options;
  const subformat = options.subformat ?? 'monolithicSparse';
  if (!(VMDK_SUBFORMATS as readonly string[]).includes(subformat)) {
    throw new InvalidOptionError({
      option: 'subformat',
      value: subformat,
      message: `Unknown subformat: ${subformat}`,
    });
  }
  const adapterType = options.adapter_type ?? 'ide';
  if (!ADAPTER_TYPES.includes(adapterType)) {
    throw new InvalidOptionError({
      option: 'adapter_type',
      value: adapterType,
      message: `Unknown adapter type: '${adapterType}'`,
    });
  }
  const compat6 = parseBool(options, 'compat6');
  if (compat6 && options.hwversion !== undefined) {
    throw new InvalidOptionError({
      option: 'compat6',
      message: 'compat6 cannot be enabled with hwversion set',
    });
  }
  const hwVersion = compat6 ? '6' : (options.hwversion ?? '4');
  const zeroedGrain = parseBool(options, 'zeroed_grain');
  if (options.preallocation !== undefined && options.preallocation !== 'off') {
    throw new UnsupportedError({ format: 'vmdk', feature: `preallocation=${options.preallocation}` });
  }
  if (context.backingFormat !== undefined && context.backingFormat !== 'vmdk') {
    throw new InvalidOptionError({
      option: 'backing_fmt',
      value: context.backingFormat,
      message: `Invalid backing file format '${context.backingFormat}'. Only vmdk is supported.`,
    });
  }
  const sizeBytes = Math.ceil(context.sizeBytes / SECTOR_BYTES) * SECTOR_BYTES;
  const parentCid = context.backingFile ? await parentCidOf(context, context.backingFile) : 0xffffffff;
  const heads = adapterType === 'ide' ? 16 : 255;
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  const split = subformat.startsWith('twoGbMaxExtent');
  const compressed = subformat === 'streamOptimized';
  const name = basename(context.path);
  const extension = extname(name);
  const prefix = name.slice(0, name.length - extension.length);
  const folder = dirname(context.path);

  const extents: Array<ExtentLine & { sizeBytes: number }> = [];
  if (split) {
    for (let start = 0, index = 1; start < sizeBytes || index === 1; start += SPLIT_EXTENT_BYTES, index++) {
      const extentBytes = Math.min(SPLIT_EXTENT_BYTES, sizeBytes - start);
      const fileName = `${prefix}-${flat ? 'f' : 's'}${String(index).padStart(3, '0')}${extension}`;
      extents.push({
        access: 'RW',
        sectors: extentBytes / SECTOR_BYTES,
        type: flat ? 'FLAT' : 'SPARSE',
        fileName,
        offsetSectors: 0,
        sizeBytes: extentBytes,
      });
      if (sizeBytes === 0) break;
    }
  } else {
    const fileName = subformat === 'monolithicFlat' ? `${prefix}-flat${extension}` : name;
    extents.push({
      access: 'RW',
      sectors: sizeBytes / SECTOR_BYTES,
      type: flat ? 'FLAT' : 'SPARSE',
      fileName,
      offsetSectors: 0,
      sizeBytes,
    });
  }
  const descriptorText = buildDescriptor({
    cid: randomInt(0, 0xffffffff),
    parentCid,
    createType: subformat,
    parentFileNameHint: context.backingFile,
    extents,
    hwVersion,
    cylinders: Math.floor(sizeBytes / (63 * heads * SECTOR_BYTES)),
    heads,
    adapterType,
    toolsVersion: options.toolsversion ?? '2147483647',
  });

  if (subformat === 'monolithicSparse' || subformat === 'streamOptimized') {
    await writeSparseExtent(context.file, sizeBytes, compressed, zeroedGrain, descriptorText);
    await context.file.sync();
    return;
  }
  for (const extent of extents) {
    const file = await NodeHostFile.open(join(folder, extent.fileName), {
      readOnly: false,
      create: true,
      truncate: true,
    });
    try {
      if (flat) await file.truncate(extent.sizeBytes);
      else await writeSparseExtent(file, extent.sizeBytes, false, zeroedGrain);
      await file.sync();
    } finally {
      await file.close();
    }
  }
  await context.file.truncate(0);
  await context.file.write(0, Buffer.from(descriptorText, 'latin1'));
  await context.file.sync();
}
