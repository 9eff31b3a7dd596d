// Changing the backing file an open qcow2 image names (qemu's qcow2_change_backing_file): the backing
// file name and the backing-format header extension are rewritten by serializing the whole header
// cluster again and writing it in one write, then syncing. qcow2.txt "Header", "Header extensions".

import { ImageFormatError, InvalidOptionError } from '../../errors.ts';
import { EXT_BACKING_FORMAT, type Qcow2Header, serializeHeader } from './header.ts';
import type { Qcow2Image } from './image.ts';

/**
 * Points the image at backing file `name` with format `format` (written as the backing-format extension),
 * or removes the backing file when `name` is undefined or empty. The header cluster is rebuilt from the
 * in-memory header, so unknown extensions are kept; a name that no longer fits in the header cluster is
 * refused (InvalidOptionError, option backing_file) before anything is written.
 */
export async function setQcow2BackingFile(
  image: Qcow2Image,
  name: string | undefined,
  format: string | undefined,
): Promise<void> {
  const hasBacking = name !== undefined && name !== '';
  const extensions = image.header.extensions.filter((extension) => extension.type !== EXT_BACKING_FORMAT);
  // qemu writes the backing-format extension first (qcow2_update_header).
  if (hasBacking && format)
    extensions.unshift({ type: EXT_BACKING_FORMAT, data: Buffer.from(format, 'utf8') });
  const next: Qcow2Header = {
    ...image.header,
    extensions,
    backingFileName: hasBacking ? name : undefined,
    backingFormat: hasBacking ? format : undefined,
  };
  try {
    await rewriteHeaderCluster(image, next);
  } catch (err) {
    if (!(err instanceof ImageFormatError)) throw err;
    throw new InvalidOptionError({
      option: 'backing_file',
      value: name,
      message: `${image.path}: Could not change the backing file to '${name}': the name does not fit in the header cluster`,
      cause: err,
    });
  }
}

/**
 * Writes `next` as the image's header: the image's tables are flushed first (the new header may point at
 * them), then the whole header cluster is serialized and written in one write and synced; only then is the
 * in-memory header updated. The bytes that differ (fields, extensions, backing name) sit in the cluster's
 * first sectors and the rest is zeros before and after, as with qemu's qcow2_update_header. Throws
 * ImageFormatError (VDISK_EFORMAT) before writing anything when `next` does not fit in one cluster.
 */
export async function rewriteHeaderCluster(image: Qcow2Image, next: Qcow2Header): Promise<void> {
  await image.flush();
  const cluster = serializeHeader(next, image.path);
  await image.file.write(0, cluster);
  await image.file.sync();
  Object.assign(image.header, next, {
    headerLengthBytes: next.version === 2 ? 72 : next.headerLengthBytes,
    backingFileOffsetBytes: Number(cluster.readBigUInt64BE(8)),
    backingFileSizeBytes: cluster.readUInt32BE(16),
  });
}
