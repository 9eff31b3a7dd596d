// Changing the backing file an open qcow2 image names (qemu's qcow2_change_backing_file): the backing
// file name and the backing-format header extension are rewritten by serializing the whole header
// cluster again and writing it in one write, then syncing. qcow2.txt "Header", "Header extensions".

import { InvalidOptionError } from '../../errors.ts';
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
  // Everything the header points at (L1, refcount table) must be on disk before a header naming it is.
  await image.flush();
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
  let cluster: Buffer;
  try {
    cluster = serializeHeader(next, image.path);
  } catch (err) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: name,
      message: `${image.path}: Could not change the backing file to '${name}': the name does not fit in the header cluster`,
      cause: err,
    });
  }
  // One write of the header cluster, then a sync: the bytes that differ (header fields, extensions, name)
  // sit in its first sectors and the rest is zeros before and after, as qemu's header rewrite does.
  await image.file.write(0, cluster);
  await image.file.sync();
  image.header.extensions = extensions;
  image.header.backingFileName = next.backingFileName;
  image.header.backingFormat = next.backingFormat;
  image.header.backingFileOffsetBytes = cluster.readUInt32BE(8) * 2 ** 32 + cluster.readUInt32BE(12);
  image.header.backingFileSizeBytes = cluster.readUInt32BE(16);
}
