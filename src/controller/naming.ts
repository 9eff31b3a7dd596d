// Names, labels and the finalizer the controller stamps on what it creates. Child names are
// deterministic, so a controller killed after a create and restarted finds the object (409 on a
// second create) instead of making a duplicate. Long names are cut and suffixed with a hash.

import { createHash } from 'node:crypto';
import type { DiskFormat } from '../api/virtual-disk.ts';

export const FINALIZER = 'vdisk.dev/cleanup';
export const FIELD_MANAGER = 'vdisk-controller';

export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'vdisk-controller';
export const LABEL_DISK = 'vdisk.dev/disk';
export const LABEL_SNAPSHOT = 'vdisk.dev/snapshot';
export const LABEL_OPERATION = 'vdisk.dev/operation';
/** `VirtualDisk` or `DiskSnapshot`: which reconciler owns a Job. */
export const LABEL_OWNER_KIND = 'vdisk.dev/owner-kind';

/** Selector for every object the controller creates (informers watch only these). */
export const MANAGED_SELECTOR = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;

/** Short stable hash (8 hex digits) of a text. */
export function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 8);
}

/** `parts` joined with `-`, cut to `maxLength` with a hash of the whole when too long. */
export function boundedName(parts: readonly string[], maxLength: number): string {
  const full = parts.join('-');
  if (full.length <= maxLength) return full;
  const hash = shortHash(full);
  return `${full.slice(0, maxLength - hash.length - 1).replace(/-+$/, '')}-${hash}`;
}

/** PVC holding a disk's image (PVC names may be 253 characters). */
export function claimNameFor(diskName: string): string {
  return boundedName(['vdisk', diskName], 253);
}

/** An imager Job's name: 63 characters at most, since it becomes the pods' job-name label. */
export function jobNameFor(
  prefix: 'vd' | 'vds',
  objectName: string,
  operation: string,
  discriminator?: string,
): string {
  return boundedName([prefix, objectName, operation, ...(discriminator ? [discriminator] : [])], 63);
}

/** Image file name on the PVC (`disk.qcow2`; raw is `disk.img`). */
export function imageFileName(format: DiskFormat | string): string {
  return format === 'raw' ? 'disk.img' : `disk.${format}`;
}

/** Frozen image of an external snapshot, beside the overlay at the PVC root (backing names stay plain). */
export function externalSnapshotFile(snapshotName: string): string {
  return `snapshot-${snapshotName}.qcow2`;
}

/** Labels label values may hold (63 characters, alphanumeric ends); longer names are hashed. */
export function labelValue(text: string): string {
  return boundedName([text], 63);
}
