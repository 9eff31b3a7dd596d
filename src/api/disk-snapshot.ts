// DiskSnapshot (vdisk.dev/v1alpha1): a point-in-time copy of a VirtualDisk's image, internal (a qcow2
// snapshot table entry) or external (the image is frozen and becomes the backing file of a new
// overlay). Spec and status as zod schemas, the one source of the CRD (DESIGN.md "API"). Pure.

import { z } from 'zod';
import { API_GROUP, boundedString, conditionsSchema, type ObjectMeta, objectName } from './common.ts';

export const SNAPSHOT_MODES = ['internal', 'external'] as const;
export type SnapshotMode = (typeof SNAPSHOT_MODES)[number];

export const SNAPSHOT_PHASES = ['Pending', 'Creating', 'Ready', 'Failed', 'Terminating'] as const;
export type SnapshotPhase = (typeof SNAPSHOT_PHASES)[number];

export const diskSnapshotSpecSchema = z
  .object({
    virtualDiskName: objectName('VirtualDisk in the same namespace to snapshot'),
    mode: z.enum(SNAPSHOT_MODES).default('internal').meta({
      description: 'internal: a qcow2 internal snapshot; external: the image becomes a backing file',
    }),
  })
  .meta({
    description: 'What to snapshot. Immutable.',
    'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'spec is immutable' }],
  });
export type DiskSnapshotSpec = z.infer<typeof diskSnapshotSpecSchema>;

export const diskSnapshotStatusSchema = z.object({
  phase: z.enum(SNAPSHOT_PHASES).optional(),
  readyToUse: z.boolean().optional(),
  creationTime: boundedString(64, 'When the snapshot was taken (RFC 3339)').optional(),
  restoreSize: boundedString(32, 'Size a restored disk needs (the disk size when taken)').optional(),
  snapshotName: boundedString(256, 'Name inside the image (internal) or backing file (external)').optional(),
  conditions: conditionsSchema.optional(),
  observedGeneration: z.int().min(0).optional(),
  message: boundedString(4096, 'Last error, when phase is Failed').optional(),
});
export type DiskSnapshotStatus = z.infer<typeof diskSnapshotStatusSchema>;

export interface DiskSnapshot {
  apiVersion: string;
  kind: 'DiskSnapshot';
  metadata: ObjectMeta;
  spec: DiskSnapshotSpec;
  status?: DiskSnapshotStatus;
}

export const diskSnapshotNames = {
  group: API_GROUP,
  kind: 'DiskSnapshot',
  listKind: 'DiskSnapshotList',
  plural: 'disksnapshots',
  singular: 'disksnapshot',
  shortNames: ['vdsnap'],
  categories: ['vdisk', 'all'],
} as const;

export const diskSnapshotPrinterColumns = [
  { name: 'Disk', type: 'string', jsonPath: '.spec.virtualDiskName' },
  { name: 'Mode', type: 'string', jsonPath: '.spec.mode' },
  { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
  { name: 'ReadyToUse', type: 'boolean', jsonPath: '.status.readyToUse' },
  { name: 'Size', type: 'string', jsonPath: '.status.restoreSize' },
  { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
] as const;

/** Parses an object read from the API into a typed DiskSnapshot, applying schema defaults. */
export function parseDiskSnapshot(object: unknown): DiskSnapshot {
  const raw = object as { apiVersion?: string; metadata?: ObjectMeta; spec?: unknown; status?: unknown };
  const spec = diskSnapshotSpecSchema.parse(raw.spec);
  const parsedStatus = raw.status === undefined ? undefined : diskSnapshotStatusSchema.safeParse(raw.status);
  return {
    apiVersion: raw.apiVersion ?? '',
    kind: 'DiskSnapshot',
    metadata: raw.metadata ?? { name: '' },
    spec,
    ...(parsedStatus?.success ? { status: parsedStatus.data } : {}),
  };
}
