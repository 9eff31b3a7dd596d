// Opening a VMDK: a hosted sparse file (KDMV, embedded descriptor) or a text descriptor naming extents
// (FLAT, VMFS, SPARSE, VMFSSPARSE, ZERO), each file resolved against the descriptor's folder and refused
// when it escapes it; parentCID/parentFileNameHint become the backing file. As qemu 7.2's vmdk_open.

import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { BlockDevice } from '../../block-device.ts';
import { ImageFormatError, PermissionError, UnsupportedError } from '../../errors.ts';
import { type HostFile, NodeHostFile } from '../../io/host-file.ts';
import { readExact } from '../common/binary.ts';
import type { OpenContext } from '../driver.ts';
import {
  type Descriptor,
  emptyDescriptor,
  looksLikeDescriptor,
  MAX_DESCRIPTOR_BYTES,
  parseDescriptor,
} from './descriptor.ts';
import { type OpenedExtent, VmdkDevice } from './device.ts';
import { SeSparseExtent } from './sesparse-extent.ts';
import { SparseExtent } from './sparse-extent.ts';
import { hasSparseMagic, SECTOR_BYTES, SPARSE_HEADER_BYTES, VMDK3_MAGIC } from './sparse-header.ts';

/** createTypes qemu opens from a descriptor file (monolithicSparse/streamOptimized are sparse files). */
const DESCRIPTOR_TYPES = new Set([
  'monolithicFlat',
  'vmfs',
  'vmfsSparse',
  'seSparse',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
]);

async function readEmbeddedDescriptor(file: HostFile, extent: SparseExtent): Promise<Descriptor | undefined> {
  const { descriptorOffsetSectors, descriptorSectors } = extent.header;
  if (descriptorOffsetSectors === 0 || descriptorSectors === 0) return undefined;
  const lengthBytes = Math.min(descriptorSectors * SECTOR_BYTES, MAX_DESCRIPTOR_BYTES);
  const bytes = Buffer.alloc(lengthBytes);
  const count = await file.read(descriptorOffsetSectors * SECTOR_BYTES, bytes);
  try {
    return parseDescriptor(
      bytes.subarray(0, count).toString('latin1'),
      file.path,
      descriptorOffsetSectors * SECTOR_BYTES,
    );
  } catch {
    // qemu reads only createType/CID/parent fields from an embedded descriptor; a bad extent line there
    // (the extent is the file itself) does not stop the image from opening.
    return undefined;
  }
}

async function realOrResolved(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/** Resolves an extent name against the descriptor's folder; PermissionError when it leaves the folder. */
async function resolveExtentPath(descriptorPath: string, fileName: string): Promise<string> {
  const folder = dirname(descriptorPath);
  const target = isAbsolute(fileName) ? fileName : join(folder, fileName);
  const realFolder = await realOrResolved(folder);
  const realTarget = await realOrResolved(target);
  const rel = relative(realFolder, realTarget);
  if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new PermissionError({
      file: descriptorPath,
      message: `extent file '${fileName}' resolves to ${realTarget}, outside the descriptor's folder ${realFolder}`,
    });
  }
  return target;
}

async function openBackingOf(context: OpenContext, descriptor: Descriptor): Promise<BlockDevice | undefined> {
  if (descriptor.parentCid === 0xffffffff || !descriptor.parentFileNameHint || !context.openBacking)
    return undefined;
  return context.openBacking(descriptor.parentFileNameHint, undefined);
}

async function openSparseFile(context: OpenContext): Promise<BlockDevice> {
  const sparse = await SparseExtent.open(context.file, context.readOnly);
  const embedded = await readEmbeddedDescriptor(context.file, sparse);
  const descriptor: Descriptor = embedded ?? emptyDescriptor();
  if (!descriptor.createType) descriptor.createType = 'monolithicSparse';
  const extent: OpenedExtent = {
    kind: 'sparse',
    startBytes: 0,
    sizeBytes: sparse.sizeBytes,
    typeName: '',
    path: context.path,
    file: context.file,
    flatOffsetBytes: 0,
    sparse,
    isReadOnly: false,
  };
  const backing = await openBackingOf(context, descriptor);
  return new VmdkDevice({
    path: context.path,
    descriptor,
    extents: [extent],
    isReadOnly: context.readOnly,
    backing,
    otherFiles: [],
  });
}

async function openDescriptorFile(context: OpenContext, text: string): Promise<BlockDevice> {
  const descriptor = parseDescriptor(text, context.path);
  if (!DESCRIPTOR_TYPES.has(descriptor.createType)) {
    throw new UnsupportedError({
      format: 'vmdk',
      feature: `createType ${descriptor.createType}`,
      message: `${context.path}: Unsupported image type '${descriptor.createType}'`,
    });
  }
  if (descriptor.extents.length === 0) {
    throw new ImageFormatError({ file: context.path, message: 'the descriptor names no extents' });
  }
  const extents: OpenedExtent[] = [];
  const openedFiles: HostFile[] = [];
  let startBytes = 0;
  try {
    for (const line of descriptor.extents) {
      const isReadOnly = line.access !== 'RW';
      if (line.type === 'ZERO') {
        extents.push({
          kind: 'zero',
          startBytes,
          sizeBytes: line.sectors * SECTOR_BYTES,
          typeName: 'ZERO',
          path: '',
          file: undefined,
          flatOffsetBytes: 0,
          sparse: undefined,
          isReadOnly,
        });
        startBytes += line.sectors * SECTOR_BYTES;
        continue;
      }
      if (line.type === 'SESPARSE') {
        if (!context.readOnly) {
          throw new UnsupportedError({
            format: 'vmdk',
            feature: 'writing seSparse',
            message: `${context.path}: No write support for seSparse images available`,
          });
        }
        const path = await resolveExtentPath(context.path, line.fileName);
        const file = await NodeHostFile.open(path, { readOnly: true });
        openedFiles.push(file);
        const seSparse = await SeSparseExtent.open(file);
        extents.push({
          kind: 'sesparse',
          startBytes,
          sizeBytes: seSparse.sizeBytes,
          typeName: line.type,
          path,
          file,
          flatOffsetBytes: 0,
          sparse: undefined,
          seSparse,
          isReadOnly: true,
        });
        startBytes += seSparse.sizeBytes;
        continue;
      }
      if (
        line.type !== 'FLAT' &&
        line.type !== 'VMFS' &&
        line.type !== 'SPARSE' &&
        line.type !== 'VMFSSPARSE'
      ) {
        throw new UnsupportedError({
          format: 'vmdk',
          feature: `${line.type} extents`,
          message: `${context.path}: unsupported extent type ${line.type}`,
        });
      }
      const path = await resolveExtentPath(context.path, line.fileName);
      const file = await NodeHostFile.open(path, { readOnly: context.readOnly || isReadOnly });
      openedFiles.push(file);
      if (line.type === 'FLAT' || line.type === 'VMFS') {
        const sizeBytes = line.sectors * SECTOR_BYTES;
        extents.push({
          kind: 'flat',
          startBytes,
          sizeBytes,
          typeName: line.type,
          path,
          file,
          flatOffsetBytes: line.offsetSectors * SECTOR_BYTES,
          sparse: undefined,
          isReadOnly,
        });
        startBytes += sizeBytes;
      } else {
        const head = await readExact(file, 0, SPARSE_HEADER_BYTES, 'VMDK sparse extent header');
        if (head.readUInt32LE(0) === VMDK3_MAGIC) {
          throw new UnsupportedError({
            format: 'vmdk',
            feature: 'VMDK3 (COWD) extents',
            message: `${path}: VMDK version 3 (COWD) sparse extents are not supported`,
          });
        }
        const sparse = await SparseExtent.open(file, context.readOnly || isReadOnly);
        extents.push({
          kind: 'sparse',
          startBytes,
          sizeBytes: sparse.sizeBytes,
          typeName: line.type,
          path,
          file,
          flatOffsetBytes: 0,
          sparse,
          isReadOnly,
        });
        startBytes += sparse.sizeBytes;
      }
    }
    const backing = await openBackingOf(context, descriptor);
    return new VmdkDevice({
      path: context.path,
      descriptor,
      extents,
      isReadOnly: context.readOnly,
      backing,
      otherFiles: [context.file],
    });
  } catch (err) {
    for (const file of openedFiles) await file.close().catch(() => undefined);
    throw err;
  }
}

/** Opens any VMDK variant from its first file (context.file stays owned by the returned device). */
export async function openVmdk(context: OpenContext): Promise<BlockDevice> {
  const fileSizeBytes = await context.file.sizeBytes();
  const head = Buffer.alloc(Math.min(fileSizeBytes, MAX_DESCRIPTOR_BYTES));
  await context.file.read(0, head);
  if (hasSparseMagic(head)) return openSparseFile(context);
  if (head.length >= 4 && head.readUInt32LE(0) === VMDK3_MAGIC) {
    throw new UnsupportedError({
      format: 'vmdk',
      feature: 'VMDK3 (COWD)',
      message: `${context.path}: VMDK version 3 (COWD) images are not supported`,
    });
  }
  if (fileSizeBytes > MAX_DESCRIPTOR_BYTES) {
    throw new ImageFormatError({
      file: context.path,
      offsetBytes: 0,
      message: `not a VMDK: no sparse magic, and too large (${fileSizeBytes} bytes) for a descriptor`,
    });
  }
  const text = head.toString('latin1');
  if (!looksLikeDescriptor(text)) {
    throw new ImageFormatError({
      file: context.path,
      offsetBytes: 0,
      message: 'not a VMDK: neither a sparse extent nor a descriptor',
    });
  }
  return openDescriptorFile(context, text);
}
