// Changing the backing file a QED image names (qemu's bdrv_qed_change_backing_file): the 64-byte header
// and the name right after it are written in one write and synced. QED records no backing format, only
// "raw, do not probe" (QED_F_BACKING_FORMAT_NO_PROBE). Spec: qed_spec.txt "Header".

import { InvalidOptionError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import {
  encodeQedHeader,
  QED_F_BACKING_FILE,
  QED_F_BACKING_FORMAT_NO_PROBE,
  QED_HEADER_BYTES,
  type QedHeader,
} from './header.ts';

/**
 * Writes `header` pointing at backing file `name` (none when undefined or empty; `format` 'raw' sets
 * NO_PROBE) and returns the new header. Throws InvalidOptionError (option backing_file) when the name
 * does not fit in the header clusters, before writing anything.
 */
export async function writeQedBackingFile(
  file: HostFile,
  path: string,
  header: QedHeader,
  name: string | undefined,
  format: string | undefined,
): Promise<QedHeader> {
  const nameBytes = Buffer.from(name ?? '', 'utf8');
  const hasBacking = nameBytes.length > 0;
  let features = header.features & ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
  if (hasBacking) features |= QED_F_BACKING_FILE;
  if (hasBacking && format === 'raw') features |= QED_F_BACKING_FORMAT_NO_PROBE;
  const next: QedHeader = {
    ...header,
    features,
    backingFilenameOffsetBytes: QED_HEADER_BYTES,
    backingFilenameSizeBytes: nameBytes.length,
  };
  if (QED_HEADER_BYTES + nameBytes.length > header.headerClusters * header.clusterSizeBytes) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: name,
      message: `${path}: Could not change the backing file to '${name}': No space left on device`,
    });
  }
  const bytes = Buffer.alloc(QED_HEADER_BYTES + nameBytes.length);
  bytes.set(encodeQedHeader(next), 0);
  nameBytes.copy(bytes, QED_HEADER_BYTES);
  await file.write(0, bytes);
  await file.sync();
  return next;
}
