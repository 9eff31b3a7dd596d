// Which imager operation a VirtualDisk needs next and the exact request for it (create, import,
// clone, restore, resize), or why it must wait (source not Ready, larger than spec.size, attached
// read-write). Pure; part of desired.ts's computation.

import {
  DATA_MOUNT_PATH,
  HEADERS_MOUNT_PATH,
  type ImagerRequest,
  SOURCE_MOUNT_PATH,
} from '../../api/imager.ts';
import { parseQuantityBytes, quantityBytes } from '../../api/quantity.ts';
import { engineFormatName, type VirtualDisk } from '../../api/virtual-disk.ts';
import { Reason, type ReasonName } from '../conditions.ts';
import { externalSnapshotFile, imageFileName } from '../naming.ts';
import type { ObservedJob } from '../observed-job.ts';
import type { ObservedDisk } from './desired.ts';

export type Operation = 'create' | 'import' | 'clone' | 'restore' | 'resize';

export const PROGRESS_REASON: Record<Operation, ReasonName> = {
  create: Reason.Creating,
  import: Reason.Creating,
  clone: Reason.Cloning,
  restore: Reason.Restoring,
  resize: Reason.Resizing,
};

export function initialOperation(disk: VirtualDisk): Operation {
  const { source } = disk.spec;
  if (source.http) return 'import';
  if (source.virtualDisk) return 'clone';
  if (source.snapshot) return 'restore';
  return 'create';
}

export function isAttachedReadWrite(disk: VirtualDisk): string | undefined {
  const attachment = disk.status?.attachment;
  if (attachment && !attachment.readOnly) return attachment.nodeName;
  if (disk.spec.attach && !disk.spec.attach.readOnly) return disk.spec.attach.nodeName;
  return undefined;
}

export function ownerOf(disk: VirtualDisk) {
  return {
    apiVersion: disk.apiVersion,
    kind: 'VirtualDisk',
    name: disk.metadata.name,
    uid: disk.metadata.uid ?? '',
  };
}

interface Plan {
  request: ImagerRequest;
  sourceClaimName?: string;
  headersSecretName?: string;
}

/** What the imager must be told for `operation`, or why it cannot start yet. */
export function planOperation(observed: ObservedDisk, operation: Operation): Plan | { waiting: string } {
  const { disk } = observed;
  const image = `${DATA_MOUNT_PATH}/${imageFileName(disk.spec.format)}`;
  const sizeBytes = quantityBytes(disk.spec.size, 'spec.size');
  const format = engineFormatName(disk.spec.format);
  const base = { image, format, sizeBytes };
  const { source } = disk.spec;
  switch (operation) {
    case 'create':
      return {
        request: {
          operation,
          ...base,
          ...(disk.spec.formatOptions ? { options: { ...disk.spec.formatOptions } } : {}),
        },
      };
    case 'resize':
      return { request: { operation, image, format, sizeBytes } };
    case 'import': {
      const http = source.http!;
      return {
        request: {
          operation,
          ...base,
          ...(disk.spec.formatOptions ? { options: { ...disk.spec.formatOptions } } : {}),
          url: http.url,
          ...(http.sha256 ? { sha256: http.sha256 } : {}),
          ...(http.format ? { sourceFormat: engineFormatName(http.format) } : {}),
          ...(http.secretRef ? { headersFile: `${HEADERS_MOUNT_PATH}/headers` } : {}),
        },
        ...(http.secretRef ? { headersSecretName: http.secretRef.name } : {}),
      };
    }
    case 'clone': {
      const sourceDisk = observed.sourceDisk;
      const name = source.virtualDisk!.name;
      if (!sourceDisk) return { waiting: `source VirtualDisk ${name} does not exist` };
      if (!sourceDisk.status?.image || sourceDisk.status.phase !== 'Ready' || !sourceDisk.status.claimName) {
        return { waiting: `source VirtualDisk ${name} is not Ready` };
      }
      const node = isAttachedReadWrite(sourceDisk);
      if (node) return { waiting: `source VirtualDisk ${name} is attached read-write on node ${node}` };
      if (sourceDisk.status.image.virtualSize > sizeBytes) {
        return {
          waiting: `source VirtualDisk ${name} is ${sourceDisk.status.image.virtualSize} bytes, larger than spec.size (${sizeBytes} bytes): grow spec.size`,
        };
      }
      return {
        request: { operation, ...base, source: `${SOURCE_MOUNT_PATH}/${sourceDisk.status.image.path}` },
        sourceClaimName: sourceDisk.status.claimName,
      };
    }
    case 'restore': {
      const snapshot = observed.sourceSnapshot;
      const name = source.snapshot!.name;
      if (!snapshot) return { waiting: `DiskSnapshot ${name} does not exist` };
      const snapshotDisk = observed.sourceSnapshotDisk;
      if (!snapshot.status?.readyToUse || !snapshot.status.snapshotName)
        return { waiting: `DiskSnapshot ${name} is not ready to use` };
      if (!snapshotDisk?.status?.image || !snapshotDisk.status.claimName) {
        return {
          waiting: `VirtualDisk ${snapshot.spec.virtualDiskName} of DiskSnapshot ${name} has no image`,
        };
      }
      const restoreBytes = snapshot.status.restoreSize
        ? parseQuantityBytes(snapshot.status.restoreSize)
        : undefined;
      if (restoreBytes !== undefined && restoreBytes > sizeBytes) {
        return {
          waiting: `DiskSnapshot ${name} needs ${snapshot.status.restoreSize}, more than spec.size ${disk.spec.size}: grow spec.size`,
        };
      }
      const external = snapshot.spec.mode === 'external';
      return {
        request: {
          operation,
          ...base,
          source: external
            ? `${SOURCE_MOUNT_PATH}/${externalSnapshotFile(snapshot.status.snapshotName)}`
            : `${SOURCE_MOUNT_PATH}/${snapshotDisk.status.image.path}`,
          ...(external ? {} : { snapshot: snapshot.status.snapshotName }),
        },
        sourceClaimName: snapshotDisk.status.claimName,
      };
    }
  }
}

export function failureReason(operation: Operation, job: ObservedJob): ReasonName {
  if (job.result && !job.result.ok && job.result.code === 'VDISK_ECHECKSUM') return Reason.ChecksumMismatch;
  return operation === 'import' ? Reason.ImportFailed : Reason.ImagerFailed;
}

export function failureMessage(job: ObservedJob): string {
  const result = job.result;
  if (result && !result.ok) {
    const sums =
      result.expectedSha256 || result.actualSha256
        ? ` (expected sha256 ${result.expectedSha256 ?? '?'}, got ${result.actualSha256 ?? '?'})`
        : '';
    return `Imager Job ${job.name} failed with ${result.code}: ${result.message}${sums}`;
  }
  return `Imager Job ${job.name} failed: ${job.failureMessage || 'no result in the termination message'}`;
}
