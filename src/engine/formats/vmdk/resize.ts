// Growing a VMDK in place (beyond qemu 7.2, which cannot resize VMDK): the last extent grows (a sparse
// one through its grain directory's padding, a FLAT one by extending its file), twoGbMaxExtent images
// gain new 2 GiB extent files named as qemu names them, and the descriptor's extent lines and geometry
// are rewritten (embedded in the sparse file, or the descriptor file).

import { basename, dirname, extname, join } from 'node:path';
import { PermissionError, UnsupportedError } from '../../errors.ts';
import { NodeHostFile } from '../../io/host-file.ts';
import { SPLIT_EXTENT_BYTES, writeSparseExtent } from './create.ts';
import { type ExtentLine, MAX_DESCRIPTOR_BYTES, rewriteDescriptorExtents } from './descriptor.ts';
import type { OpenedExtent, VmdkDevice } from './device.ts';
import { SparseExtent } from './sparse-extent.ts';
import { SECTOR_BYTES } from './sparse-header.ts';

async function growExtent(extent: OpenedExtent, sizeBytes: number): Promise<void> {
  if (extent.kind === 'sparse') {
    await extent.sparse!.grow(sizeBytes / SECTOR_BYTES);
  } else if (extent.kind === 'flat') {
    const file = extent.file!;
    const endBytes = extent.flatOffsetBytes + sizeBytes;
    if ((await file.sizeBytes()) < endBytes) await file.truncate(endBytes);
  }
  extent.sizeBytes = sizeBytes;
}

/** Grows `device` to `requestedBytes` (rounded up to a sector). Throws UnsupportedError / PermissionError. */
export async function growVmdk(device: VmdkDevice, requestedBytes: number, shrink: boolean): Promise<void> {
  if (device.isReadOnly)
    throw new PermissionError({ file: device.path, message: 'resize refused: the image is open read-only' });
  const newSizeBytes = Math.ceil(requestedBytes / SECTOR_BYTES) * SECTOR_BYTES;
  if (newSizeBytes < device.sizeBytes) {
    throw new UnsupportedError({
      format: 'vmdk',
      feature: shrink ? 'shrinking' : 'shrinking (and --shrink was not given)',
    });
  }
  if (newSizeBytes === device.sizeBytes) return;
  const descriptor = device.descriptor;
  const isSplit = descriptor.createType.startsWith('twoGbMaxExtent');
  const isEmbedded = device.otherFiles.length === 0;
  const last = device.extents[device.extents.length - 1]!;
  if (last.isReadOnly)
    throw new PermissionError({ file: last.path, message: 'resize refused: the last extent is RDONLY' });
  // Extent names as the descriptor wrote them, kept for the rewrite; an embedded descriptor names itself.
  const names = device.extents.map(
    (extent, index) => descriptor.extents[index]?.fileName ?? basename(extent.path),
  );
  let remainingBytes = newSizeBytes - device.sizeBytes;
  const lastRoomBytes = isSplit ? Math.max(0, SPLIT_EXTENT_BYTES - last.sizeBytes) : remainingBytes;
  const lastGrowthBytes = Math.min(remainingBytes, lastRoomBytes);
  if (lastGrowthBytes > 0) await growExtent(last, last.sizeBytes + lastGrowthBytes);
  remainingBytes -= lastGrowthBytes;
  if (remainingBytes > 0) {
    const isFlat = last.kind === 'flat';
    const lastName = names[names.length - 1]!;
    const match = /^(.*)-[sf](\d{3})(\.[^.]*)?$/.exec(lastName);
    const prefix = match ? match[1]! : basename(lastName, extname(lastName));
    const extension = match ? (match[3] ?? '') : extname(lastName);
    let index = match ? Number(match[2]) : device.extents.length;
    while (remainingBytes > 0) {
      index++;
      const sizeBytes = Math.min(SPLIT_EXTENT_BYTES, remainingBytes);
      const fileName = `${prefix}-${isFlat ? 'f' : 's'}${String(index).padStart(3, '0')}${extension}`;
      const path = join(dirname(device.path), fileName);
      const file = await NodeHostFile.open(path, { readOnly: false, create: true });
      if (isFlat) await file.truncate(sizeBytes);
      else await writeSparseExtent(file, sizeBytes, false, last.sparse?.hasZeroGrain ?? false);
      const sparse = isFlat ? undefined : await SparseExtent.open(file, false);
      const startBytes = device.extents[device.extents.length - 1]!;
      device.extents.push({
        kind: isFlat ? 'flat' : 'sparse',
        startBytes: startBytes.startBytes + startBytes.sizeBytes,
        sizeBytes,
        typeName: isFlat ? 'FLAT' : 'SPARSE',
        path,
        file,
        flatOffsetBytes: 0,
        sparse,
        isReadOnly: false,
      });
      names.push(fileName);
      remainingBytes -= sizeBytes;
    }
  }
  const lines: ExtentLine[] = device.extents.map((extent, index) => ({
    access: extent.isReadOnly ? 'RDONLY' : 'RW',
    sectors: extent.sizeBytes / SECTOR_BYTES,
    type: (descriptor.extents[index]?.type ??
      (extent.kind === 'flat' ? 'FLAT' : extent.kind === 'zero' ? 'ZERO' : 'SPARSE')) as ExtentLine['type'],
    fileName: names[index]!,
    offsetSectors: extent.flatOffsetBytes / SECTOR_BYTES,
  }));
  const heads = Number(descriptor.ddb.get('ddb.geometry.heads') ?? '16') || 16;
  const cylinders = Math.floor(newSizeBytes / (63 * heads * SECTOR_BYTES));
  if (isEmbedded) {
    const sparse = last.sparse!;
    const atBytes = sparse.header.descriptorOffsetSectors * SECTOR_BYTES;
    const roomBytes = Math.min(sparse.header.descriptorSectors * SECTOR_BYTES, MAX_DESCRIPTOR_BYTES);
    if (atBytes > 0 && roomBytes > 0) {
      const old = Buffer.alloc(roomBytes);
      await last.file!.read(atBytes, old);
      const text = rewriteDescriptorExtents(old.toString('latin1').replace(/\0+$/, ''), lines, cylinders);
      const bytes = Buffer.alloc(roomBytes);
      bytes.write(text.slice(0, roomBytes), 'latin1');
      await last.file!.write(atBytes, bytes);
    }
  } else {
    const file = device.otherFiles[0]!;
    const old = Buffer.alloc(Math.min(await file.sizeBytes(), MAX_DESCRIPTOR_BYTES));
    await file.read(0, old);
    const bytes = Buffer.from(rewriteDescriptorExtents(old.toString('latin1'), lines, cylinders), 'latin1');
    await file.write(0, bytes);
    await file.truncate(bytes.length);
  }
  device.sizeBytes = newSizeBytes;
  await device.flush();
  if (device.otherFiles[0]) await device.otherFiles[0].sync();
}
