// The qcow2 driver record: probe, open (with backing chain), create, check and measure, as QEMU's
// BlockDriver table at the end of block/qcow2.c. The folder's only export is `qcow2Driver`.
// Spec: QEMU docs/interop/qcow2.txt (versions 2 and 3).

import type { BlockDevice } from '../../block-device.ts';
import type { FormatDriver, OpenContext } from '../driver.ts';
import { checkQcow2, rebuildRefcounts } from './check.ts';
import { createQcow2 } from './create.ts';
import { attachDataFile } from './data-file.ts';
import { Qcow2Device } from './device.ts';
import { openQcow2Encryption, QCOW2_ENCRYPT_CREATE_OPTIONS } from './encryption.ts';
import { probeQcow2 } from './header.ts';
import { loadImage, readHeader } from './load.ts';
import { measureQcow2 } from './measure.ts';
import { QCOW2_CREATE_OPTIONS } from './options.ts';
import { openQcow2Stream } from './stream-reader.ts';
import { writeQcow2Stream } from './stream-writer.ts';

/** Opens a qcow2 image and its backing file (read-only, through context.openBacking). */
async function openQcow2(context: OpenContext): Promise<BlockDevice> {
  // Unlock first: a wrong passphrase must fail before a writable open touches the header (autoclear, dirty).
  const { header } = await readHeader(context.file, context.path);
  const encryption = await openQcow2Encryption(
    header,
    context.file,
    context.path,
    context.options,
    context.metadataOnly,
  );
  const image = await loadImage(context, rebuildRefcounts);
  let backing: BlockDevice | undefined;
  try {
    await attachDataFile(image, context.openDataFile);
    const name = image.header.backingFileName;
    if (name !== undefined && name !== '' && context.openBacking) {
      backing = await context.openBacking(name, image.header.backingFormat);
    }
  } catch (err) {
    await image.dataFile?.close().catch(() => undefined);
    throw err;
  }
  return new Qcow2Device(image, backing, { encryption });
}

export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  description: 'QEMU copy-on-write image, versions 2 (compat=0.10) and 3 (compat=1.1)',
  probe: (head) => probeQcow2(head),
  capabilities: {
    create: true,
    write: true,
    backing: true,
    internalSnapshots: true,
    check: true,
    compression: ['zlib', 'zstd'],
    encryption: ['luks', 'aes'],
    resize: 'grow-shrink',
    concurrentWrites: true,
  },
  createOptions: [...QCOW2_CREATE_OPTIONS, ...QCOW2_ENCRYPT_CREATE_OPTIONS],
  open: openQcow2,
  create: createQcow2,
  measure: measureQcow2,
  check: checkQcow2,
  writeStream: writeQcow2Stream,
  readStream: openQcow2Stream,
};
