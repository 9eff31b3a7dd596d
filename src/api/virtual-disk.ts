// VirtualDisk (vdisk.dev/v1alpha1): spec and status as zod schemas, the one source of the CRD's
// OpenAPI schema, CEL rules, printer columns and names (DESIGN.md "API"). Pure: no I/O.

import { z } from 'zod';
import {
  API_GROUP,
  boundedString,
  byteQuantity,
  conditionsSchema,
  type ObjectMeta,
  objectName,
} from './common.ts';

/** Formats the imager can create (the engine's writable drivers; qcow2 is the default). */
export const DISK_FORMATS = ['qcow2', 'raw', 'vmdk', 'vdi', 'vhd', 'vhdx', 'qed'] as const;
export type DiskFormat = (typeof DISK_FORMATS)[number];

/** The engine's (and qemu-img's) name for a spec format: users say vhd, qemu-img says vpc. */
export function engineFormatName(format: DiskFormat): string {
  return format === 'vhd' ? 'vpc' : format;
}

export const DISK_PHASES = ['Pending', 'Provisioning', 'Ready', 'Resizing', 'Failed', 'Terminating'] as const;
export type DiskPhase = (typeof DISK_PHASES)[number];

const httpSource = z
  .object({
    url: z
      .string()
      .min(1)
      .max(2048)
      .regex(/^https?:\/\/\S+$/)
      .meta({
        description:
          'http(s) URL of a raw, qcow2 or other image; gzip, xz and zstd bodies are decompressed while streaming',
      }),
    sha256: z
      .string()
      .length(64)
      .regex(/^[a-f0-9]{64}$/)
      .optional()
      .meta({
        description: 'Expected SHA-256 of the downloaded bytes (lower-case hex); a mismatch fails the import',
      }),
    format: z
      .enum(DISK_FORMATS)
      .optional()
      .meta({ description: 'Format of the downloaded image; probed when absent' }),
    secretRef: z
      .object({
        name: objectName('Secret in the same namespace holding `headers` (one `Name: value` per line)'),
      })
      .optional(),
  })
  .meta({ description: 'Import the image from an http(s) URL, streaming and converting' });

const sourceSchema = z
  .object({
    blank: z.object({}).optional().meta({ description: 'An empty image of spec.size' }),
    http: httpSource.optional(),
    virtualDisk: z
      .object({ name: objectName('VirtualDisk in the same namespace to copy') })
      .optional()
      .meta({ description: 'Clone another VirtualDisk (its current content)' }),
    snapshot: z
      .object({ name: objectName('DiskSnapshot in the same namespace to restore') })
      .optional()
      .meta({ description: 'Restore a DiskSnapshot into a new disk' }),
  })
  .meta({
    description:
      'Where the first content comes from: exactly one of blank, http, virtualDisk, snapshot. Immutable.',
    'x-kubernetes-validations': [
      {
        rule: '[has(self.blank), has(self.http), has(self.virtualDisk), has(self.snapshot)].filter(x, x).size() == 1',
        message: 'exactly one of blank, http, virtualDisk or snapshot must be set',
      },
      { rule: 'self == oldSelf', message: 'source is immutable' },
    ],
  });

const storageSchema = z
  .object({
    storageClassName: boundedString(
      253,
      'StorageClass of the PVC holding the image; the cluster default when absent',
    ).optional(),
    accessModes: z
      .array(z.enum(['ReadWriteOnce', 'ReadWriteOncePod', 'ReadWriteMany', 'ReadOnlyMany']))
      .min(1)
      .max(4)
      .optional()
      .meta({ description: 'PVC access modes (default ReadWriteOnce)' }),
    extraHeadroom: byteQuantity(
      'Bytes added to the measured image size when sizing the PVC (default 0)',
    ).optional(),
  })
  .meta({
    description: 'The PVC that holds the image file. Immutable.',
    'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'storage is immutable' }],
  });

const partitionSchema = z.object({
  size: byteQuantity('Partition size; the last partition may omit it to take the rest').optional(),
  type: z.enum(['linux', 'swap', 'efi', 'bios-boot', 'fat32', 'ntfs']).default('linux'),
  filesystem: z.enum(['ext4', 'xfs', 'vfat', 'btrfs', 'swap', 'none']).default('none'),
  label: boundedString(36, 'Filesystem or GPT partition label').optional(),
});

const layoutSchema = z
  .object({
    table: z.enum(['mbr', 'gpt']).meta({ description: 'Partition table type' }),
    partitions: z.array(partitionSchema).min(1).max(16),
  })
  .meta({ description: 'Partition table and filesystems created on first attach' });

const mountSchema = z.object({
  partition: z.int().min(1).max(128).meta({ description: 'Partition number (1-based)' }),
  path: z
    .string()
    .min(2)
    .max(1024)
    .regex(/^\/[^\0]*$/)
    .meta({ description: 'Absolute mount point on the node' }),
  options: boundedString(512, 'mount -o options').optional(),
});

const attachSchema = z
  .object({
    nodeName: z
      .string()
      .min(1)
      .max(253)
      .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/)
      .meta({ description: 'Node that serves and mounts the disk' }),
    readOnly: z.boolean().default(false),
    mounts: z.array(mountSchema).max(16).optional(),
  })
  .meta({
    description: 'Attach the disk as a block device on a node (nbd + kpartx), optionally mounting partitions',
  });

export const virtualDiskSpecSchema = z
  .object({
    size: byteQuantity('Guest-visible size (a quantity such as 10Gi); may grow, never shrink').meta({
      'x-kubernetes-validations': [
        {
          rule: 'isQuantity(self) && quantity(self).isGreaterThan(quantity("0"))',
          message: 'size must be a positive quantity such as 10Gi',
        },
        {
          rule: 'quantity(self).compareTo(quantity(oldSelf)) >= 0',
          message: 'size may only grow (shrinking an image loses data)',
        },
      ],
    }),
    format: z
      .enum(DISK_FORMATS)
      .default('qcow2')
      .meta({
        description: 'Image format on the PVC. Immutable.',
        'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'format is immutable' }],
      }),
    formatOptions: z
      .record(z.string().max(64), z.string().max(256))
      .optional()
      .meta({
        description: 'qemu-img -o options (cluster_size, compat, lazy_refcounts, ...). Immutable.',
        maxProperties: 16,
        'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'formatOptions is immutable' }],
      }),
    source: sourceSchema,
    storage: storageSchema.optional(),
    deletionPolicy: z
      .enum(['Delete', 'Retain'])
      .default('Delete')
      .meta({ description: 'What happens to the PVC when the VirtualDisk is deleted' }),
    layout: layoutSchema.optional(),
    attach: attachSchema.optional(),
  })
  .meta({
    'x-kubernetes-validations': [
      { rule: 'has(self.storage) == has(oldSelf.storage)', message: 'storage is immutable' },
      {
        rule: 'has(self.formatOptions) == has(oldSelf.formatOptions)',
        message: 'formatOptions is immutable',
      },
    ],
  });
export type VirtualDiskSpec = z.infer<typeof virtualDiskSpecSchema>;
/** A spec as written by users, before defaults are applied. */
export type VirtualDiskSpecInput = z.input<typeof virtualDiskSpecSchema>;

export const imageStatusSchema = z.object({
  path: boundedString(256, 'Image file path relative to the PVC root'),
  format: boundedString(16, 'Image format'),
  virtualSize: z.int().min(0).meta({ description: 'Guest size in bytes' }),
  actualSize: z.int().min(0).optional().meta({ description: 'Bytes used on the volume' }),
  clusterSize: z.int().min(0).optional().meta({ description: 'Cluster size in bytes (qcow2, vmdk, ...)' }),
  snapshots: z.array(boundedString(256, 'Internal snapshot name')).max(256).optional(),
  sha256: z
    .string()
    .length(64)
    .regex(/^[a-f0-9]{64}$/)
    .optional()
    .meta({ description: 'SHA-256 of the imported bytes' }),
});
export type ImageStatus = z.infer<typeof imageStatusSchema>;

const attachmentStatusSchema = z.object({
  nodeName: boundedString(253, 'Node the disk is attached to'),
  device: boundedString(64, 'Block device (/dev/nbdN)').optional(),
  readOnly: z.boolean().optional(),
  partitions: z
    .array(
      z.object({
        name: boundedString(128, 'Device-mapper name'),
        start: z.int().min(0).meta({ description: 'Start in bytes' }),
        size: z.int().min(0).meta({ description: 'Size in bytes' }),
        mountPath: boundedString(1024, 'Mount point').optional(),
      }),
    )
    .max(128)
    .optional(),
});

export const virtualDiskStatusSchema = z.object({
  phase: z.enum(DISK_PHASES).optional(),
  conditions: conditionsSchema.optional(),
  observedGeneration: z.int().min(0).optional(),
  claimName: boundedString(253, 'PVC holding the image').optional(),
  size: boundedString(32, 'Current guest size as a quantity (printer column)').optional(),
  node: boundedString(253, 'Node the disk is attached to (printer column)').optional(),
  image: imageStatusSchema.optional(),
  attachment: attachmentStatusSchema.optional(),
  progress: boundedString(16, 'Progress of the running imager Job (e.g. 42%)').optional(),
  message: boundedString(4096, 'Last error, when phase is Failed').optional(),
});
export type VirtualDiskStatus = z.infer<typeof virtualDiskStatusSchema>;

export interface VirtualDisk {
  apiVersion: string;
  kind: 'VirtualDisk';
  metadata: ObjectMeta;
  spec: VirtualDiskSpec;
  status?: VirtualDiskStatus;
}

/** Names, columns and categories of the CRD (`kubectl get vd`). */
export const virtualDiskNames = {
  group: API_GROUP,
  kind: 'VirtualDisk',
  listKind: 'VirtualDiskList',
  plural: 'virtualdisks',
  singular: 'virtualdisk',
  shortNames: ['vd'],
  categories: ['vdisk', 'all'],
} as const;

export const virtualDiskPrinterColumns = [
  { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
  { name: 'Format', type: 'string', jsonPath: '.spec.format' },
  { name: 'Size', type: 'string', jsonPath: '.spec.size' },
  { name: 'Node', type: 'string', jsonPath: '.status.node' },
  { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
] as const;

/** Parses an object read from the API into a typed VirtualDisk, applying schema defaults. */
export function parseVirtualDisk(object: unknown): VirtualDisk {
  const raw = object as { apiVersion?: string; metadata?: ObjectMeta; spec?: unknown; status?: unknown };
  const spec = virtualDiskSpecSchema.parse(raw.spec);
  // A status the schema rejects (written by another version) is treated as absent: it is recomputed.
  const parsedStatus = raw.status === undefined ? undefined : virtualDiskStatusSchema.safeParse(raw.status);
  const status = parsedStatus?.success ? parsedStatus.data : undefined;
  return {
    apiVersion: raw.apiVersion ?? '',
    kind: 'VirtualDisk',
    metadata: raw.metadata ?? { name: '' },
    spec,
    ...(status ? { status } : {}),
  };
}
