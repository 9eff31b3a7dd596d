// qemu-img snapshot: list, create, apply (revert to) and delete a format's internal snapshots through
// BlockDevice.snapshots. Names are looked up as qemu-img 7.2 does: apply takes an ID or a name (ID
// first), delete takes a name only (bdrv_snapshot_find). Errors carry qemu-img's wording.

import type { BlockDevice, SnapshotInfo } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { openImage } from '../open.ts';

export type SnapshotAction =
  | { kind: 'list' }
  | { kind: 'create'; name: string }
  | { kind: 'apply'; name: string }
  | { kind: 'delete'; name: string };

export interface SnapshotImageRequest {
  path: string;
  /** `-f`; probed when absent. */
  format?: string;
  action: SnapshotAction;
  allowBackingEscape?: boolean;
}

const VERB = { list: 'list', create: 'create', apply: 'apply', delete: 'delete' } as const;

/**
 * Runs one snapshot action on the image; returns the snapshot table after it (the list for `list`).
 * Throws UnsupportedError (VDISK_ENOTSUP) when the format has no internal snapshots and
 * InvalidOptionError (VDISK_EINVAL, option `snapshot`) when the named snapshot is not there.
 */
export async function snapshotImage(request: SnapshotImageRequest): Promise<SnapshotInfo[]> {
  const { action } = request;
  const device: BlockDevice = await openImage(request.path, {
    format: request.format,
    readOnly: action.kind === 'list',
    // Snapshot tables and L1 copies are metadata: an encrypted image needs no key here.
    metadataOnly: true,
    // Snapshots are per file: qemu-img opens the image without its backing chain for -l (BDRV_O_NO_BACKING).
    noBacking: true,
    allowBackingEscape: request.allowBackingEscape ?? false,
  });
  try {
    const operations = device.snapshots;
    if (!operations) {
      if (action.kind === 'list') return [];
      throw new UnsupportedError({
        format: device.formatName,
        feature: 'internal snapshots',
        message: `Could not ${VERB[action.kind]} snapshot '${action.name}': -95 (Operation not supported)`,
      });
    }
    switch (action.kind) {
      case 'list':
        break;
      case 'create':
        await operations.create(action.name);
        break;
      case 'apply': {
        const table = await operations.list();
        if (!table.some((entry) => entry.id === action.name || entry.name === action.name))
          throw new InvalidOptionError({
            option: 'snapshot',
            value: action.name,
            message: `Could not apply snapshot '${action.name}': Failed to load snapshot: No such file or directory`,
          });
        await operations.apply(action.name);
        break;
      }
      case 'delete': {
        const entry = (await operations.list()).find((candidate) => candidate.name === action.name);
        if (!entry)
          throw new InvalidOptionError({
            option: 'snapshot',
            value: action.name,
            message: `Could not delete snapshot '${action.name}': snapshot not found`,
          });
        // By ID: IDs are unique, names need not be.
        await operations.delete(entry.id);
        break;
      }
    }
    const after = await operations.list();
    await device.flush();
    return after;
  } finally {
    await device.close();
  }
}
