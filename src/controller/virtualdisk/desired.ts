// Pure: (VirtualDisk, observed state) -> the PVC, imager Jobs, finalizer and status the disk should
// have. No client, no clock (`now` comes in), so unit tests are tables and a killed reconcile re-runs
// to the same answer. Order of work: finalizer, PVC, one imager Job at a time per PVC, status.

import type { V1PersistentVolumeClaim, V1Pod } from '@kubernetes/client-node';
import type { Condition } from '../../api/common.ts';
import type { DiskSnapshot } from '../../api/disk-snapshot.ts';
import {
  DATA_MOUNT_PATH,
  HEADERS_MOUNT_PATH,
  type ImagerRequest,
  SOURCE_MOUNT_PATH,
} from '../../api/imager.ts';
import { formatQuantityBytes, parseQuantityBytes, quantityBytes } from '../../api/quantity.ts';
import type { DiskPhase, VirtualDisk, VirtualDiskStatus } from '../../api/virtual-disk.ts';
import { attachPodName, buildAttachPod } from '../attach-pod.ts';
import { ConditionType, Reason, type ReasonName, setCondition } from '../conditions.ts';
import { buildImagerJob, type PodSettings } from '../imager-job.ts';
import {
  claimNameFor,
  externalSnapshotFile,
  FINALIZER,
  imageFileName,
  jobNameFor,
  LABEL_DISK,
  LABEL_MANAGED_BY,
  labelValue,
  MANAGED_BY,
} from '../naming.ts';
import type { ObservedJob } from '../observed-job.ts';

export interface ObservedDisk {
  disk: VirtualDisk;
  claim: V1PersistentVolumeClaim | undefined;
  /** Every imager Job labelled with this disk, whichever kind owns it. */
  jobs: readonly ObservedJob[];
  /** Attach pods of this disk (label vdisk.dev/role=attach). */
  attachPods: readonly V1Pod[];
  /** From sizing.ts: what the PVC must request. */
  requiredClaimBytes: number;
  /** spec.source.virtualDisk, when set and found. */
  sourceDisk: VirtualDisk | undefined;
  /** spec.source.snapshot, when set and found, with the disk it was taken of. */
  sourceSnapshot: DiskSnapshot | undefined;
  sourceSnapshotDisk: VirtualDisk | undefined;
  settings: PodSettings;
  /** RFC 3339 time used for new condition transitions. */
  now: string;
}

export interface EventSpec {
  type: 'Normal' | 'Warning';
  reason: ReasonName;
  message: string;
}

export interface DesiredDisk {
  addFinalizer: boolean;
  removeFinalizer: boolean;
  createClaim: V1PersistentVolumeClaim | undefined;
  /** Grow the PVC's request to this many bytes (volume expansion). */
  expandClaimToBytes: number | undefined;
  deleteClaim: boolean;
  /** Retain policy: drop the disk's ownerReference from the PVC so the garbage collector keeps it. */
  releaseClaim: boolean;
  createJobs: ReturnType<typeof buildImagerJob>[];
  deleteJobs: string[];
  createPods: V1Pod[];
  deletePods: string[];
  status: VirtualDiskStatus;
  events: EventSpec[];
}

type Operation = 'create' | 'import' | 'clone' | 'restore' | 'resize';

const PROGRESS_REASON: Record<Operation, ReasonName> = {
  create: Reason.Creating,
  import: Reason.Creating,
  clone: Reason.Cloning,
  restore: Reason.Restoring,
  resize: Reason.Resizing,
};

function initialOperation(disk: VirtualDisk): Operation {
  const { source } = disk.spec;
  if (source.http) return 'import';
  if (source.virtualDisk) return 'clone';
  if (source.snapshot) return 'restore';
  return 'create';
}

function claimRequestBytes(claim: V1PersistentVolumeClaim): number | undefined {
  const request = claim.spec?.resources?.requests?.storage;
  return request === undefined ? undefined : parseQuantityBytes(String(request));
}

function isAttachedReadWrite(disk: VirtualDisk): string | undefined {
  const attachment = disk.status?.attachment;
  if (attachment && !attachment.readOnly) return attachment.nodeName;
  if (disk.spec.attach && !disk.spec.attach.readOnly) return disk.spec.attach.nodeName;
  return undefined;
}

function ownerOf(disk: VirtualDisk) {
  return {
    apiVersion: disk.apiVersion,
    kind: 'VirtualDisk',
    name: disk.metadata.name,
    uid: disk.metadata.uid ?? '',
  };
}

/** The PVC a disk's image lives on. */
export function buildClaim(disk: VirtualDisk, requestBytes: number): V1PersistentVolumeClaim {
  const storage = disk.spec.storage;
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: {
      name: claimNameFor(disk.metadata.name),
      namespace: disk.metadata.namespace,
      labels: { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_DISK]: labelValue(disk.metadata.name) },
      ownerReferences: [{ ...ownerOf(disk), controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      accessModes: storage?.accessModes ? [...storage.accessModes] : ['ReadWriteOnce'],
      volumeMode: 'Filesystem',
      resources: { requests: { storage: formatQuantityBytes(requestBytes) } },
      ...(storage?.storageClassName ? { storageClassName: storage.storageClassName } : {}),
    },
  };
}

interface Plan {
  request: ImagerRequest;
  sourceClaimName?: string;
  headersSecretName?: string;
}

/** What the imager must be told for `operation`, or why it cannot start yet. */
function planOperation(observed: ObservedDisk, operation: Operation): Plan | { waiting: string } {
  const { disk } = observed;
  const image = `${DATA_MOUNT_PATH}/${imageFileName(disk.spec.format)}`;
  const sizeBytes = quantityBytes(disk.spec.size, 'spec.size');
  const base = { image, format: disk.spec.format, sizeBytes };
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
      return { request: { operation, image, format: disk.spec.format, sizeBytes } };
    case 'import': {
      const http = source.http!;
      return {
        request: {
          operation,
          ...base,
          ...(disk.spec.formatOptions ? { options: { ...disk.spec.formatOptions } } : {}),
          url: http.url,
          ...(http.sha256 ? { sha256: http.sha256 } : {}),
          ...(http.format ? { sourceFormat: http.format } : {}),
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

function failureReason(operation: Operation, job: ObservedJob): ReasonName {
  if (job.result && !job.result.ok && job.result.code === 'VDISK_ECHECKSUM') return Reason.ChecksumMismatch;
  return operation === 'import' ? Reason.ImportFailed : Reason.ImagerFailed;
}

function failureMessage(job: ObservedJob): string {
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

/** Computes everything the disk should have; apply.ts makes it so. */
export function desiredDisk(observed: ObservedDisk): DesiredDisk {
  const { disk, now } = observed;
  const generation = disk.metadata.generation ?? 0;
  const claimName = claimNameFor(disk.metadata.name);
  const ownJobs = observed.jobs.filter((job) => job.ownerKind === 'VirtualDisk');
  const previous = disk.status ?? {};
  const desired: DesiredDisk = {
    addFinalizer: false,
    removeFinalizer: false,
    createClaim: undefined,
    expandClaimToBytes: undefined,
    deleteClaim: false,
    releaseClaim: false,
    createJobs: [],
    deleteJobs: [],
    createPods: [],
    deletePods: [],
    status: { ...previous, observedGeneration: generation, claimName },
    events: [],
  };
  let conditions: Condition[] = [...(previous.conditions ?? [])];
  const set = (type: string, status: 'True' | 'False' | 'Unknown', reason: ReasonName, message: string) => {
    conditions = setCondition(conditions, { type, status, reason, message }, generation, now);
  };
  const finish = (phase: DiskPhase): DesiredDisk => {
    planAttach(observed, desired, phase, set);
    const readyBefore = previous.conditions?.find((condition) => condition.type === ConditionType.Ready);
    const readyNow = conditions.find((condition) => condition.type === ConditionType.Ready);
    if (readyNow && readyNow.reason !== readyBefore?.reason) {
      const warning =
        readyNow.reason === Reason.ChecksumMismatch ||
        readyNow.reason === Reason.ImportFailed ||
        readyNow.reason === Reason.ImagerFailed;
      desired.events.push({
        type: warning ? 'Warning' : 'Normal',
        reason: readyNow.reason as ReasonName,
        message: readyNow.message,
      });
    }
    desired.status.phase = phase;
    desired.status.conditions = conditions;
    if (desired.status.image) desired.status.size = formatQuantityBytes(desired.status.image.virtualSize);
    if (phase !== 'Failed') delete desired.status.message;
    return desired;
  };

  // Deletion: stop imagers, then the PVC per deletionPolicy, then let the object go.
  if (disk.metadata.deletionTimestamp) {
    desired.deleteJobs = ownJobs.filter((job) => !job.isDeleting).map((job) => job.name);
    if (observed.claim && !observed.claim.metadata?.deletionTimestamp) {
      if (disk.spec.deletionPolicy === 'Delete') desired.deleteClaim = true;
      else if (observed.claim.metadata?.ownerReferences?.some((owner) => owner.uid === disk.metadata.uid))
        desired.releaseClaim = true;
    }
    desired.removeFinalizer = disk.metadata.finalizers?.includes(FINALIZER) ?? false;
    set(
      ConditionType.Ready,
      'False',
      Reason.Deleting,
      `Deleting: PVC ${claimName} is ${disk.spec.deletionPolicy === 'Delete' ? 'deleted' : 'retained'}`,
    );
    return finish('Terminating');
  }
  if (!disk.metadata.finalizers?.includes(FINALIZER)) desired.addFinalizer = true;

  const image = previous.image;
  const specSizeBytes = quantityBytes(disk.spec.size, 'spec.size');
  const operation: Operation | undefined = !image
    ? initialOperation(disk)
    : image.virtualSize < specSizeBytes
      ? 'resize'
      : undefined;

  if (!observed.claim) {
    desired.createClaim = buildClaim(disk, observed.requiredClaimBytes);
  } else if (operation === 'resize') {
    // Only while growing: a class without volume expansion refuses, and a Ready disk must not retry
    // (and warn) on every reconcile. The image may still fit: sparse formats rarely fill the claim.
    const requested = claimRequestBytes(observed.claim) ?? 0;
    if (requested < observed.requiredClaimBytes) desired.expandClaimToBytes = observed.requiredClaimBytes;
  }
  const currentJobName = operation
    ? jobNameFor(
        'vd',
        disk.metadata.name,
        operation,
        operation === 'resize' ? String(specSizeBytes) : undefined,
      )
    : undefined;
  const currentJob = ownJobs.find((job) => job.name === currentJobName);

  // Finished Jobs of earlier operations have been recorded: remove them (pods go with them).
  for (const job of ownJobs) {
    if (job.name !== currentJobName && job.state !== 'active' && !job.isDeleting)
      desired.deleteJobs.push(job.name);
  }

  if (!operation) {
    set(
      ConditionType.Ready,
      'True',
      Reason.ImageReady,
      `Image ${image!.path} (${image!.format}, ${formatQuantityBytes(image!.virtualSize)}) is ready on PVC ${claimName}`,
    );
    set(ConditionType.Progressing, 'False', Reason.Idle, 'No imager Job is running');
    return finish('Ready');
  }

  const progressReason = operation === 'import' ? Reason.Importing : PROGRESS_REASON[operation];
  const readyWaitReason = operation === 'import' ? Reason.Importing : Reason.Provisioning;
  const phase: DiskPhase = operation === 'resize' ? 'Resizing' : 'Provisioning';

  if (currentJob?.state === 'succeeded') {
    const result = currentJob.result;
    if (result?.ok && result.image) {
      desired.status.image = {
        path: result.image.path,
        format: result.image.format,
        virtualSize: result.image.virtualSize,
        ...(result.image.actualSize !== undefined ? { actualSize: result.image.actualSize } : {}),
        ...(result.image.clusterSize !== undefined ? { clusterSize: result.image.clusterSize } : {}),
        ...(result.image.snapshots ? { snapshots: result.image.snapshots.slice(0, 256) } : {}),
        ...(result.image.sha256
          ? { sha256: result.image.sha256 }
          : image?.sha256
            ? { sha256: image.sha256 }
            : {}),
      };
      desired.deleteJobs.push(currentJob.name);
      const made = desired.status.image;
      if (made.virtualSize >= specSizeBytes) {
        set(
          ConditionType.Ready,
          'True',
          Reason.ImageReady,
          `Image ${made.path} (${made.format}, ${formatQuantityBytes(made.virtualSize)}) is ready on PVC ${claimName}`,
        );
        set(ConditionType.Progressing, 'False', Reason.Idle, `Imager Job ${currentJob.name} finished`);
        return finish('Ready');
      }
      set(
        ConditionType.Ready,
        'False',
        Reason.Provisioning,
        `Image is ${formatQuantityBytes(made.virtualSize)}, growing to ${disk.spec.size}`,
      );
      set(
        ConditionType.Progressing,
        'True',
        Reason.Resizing,
        `Imager Job ${currentJob.name} finished; a resize follows`,
      );
      return finish('Resizing');
    }
    desired.status.message = `Imager Job ${currentJob.name} succeeded without a result in its termination message`;
    set(ConditionType.Ready, 'False', Reason.ImagerFailed, desired.status.message);
    set(ConditionType.Progressing, 'False', Reason.ImagerFailed, desired.status.message);
    return finish('Failed');
  }
  if (currentJob?.state === 'failed') {
    const message = failureMessage(currentJob);
    const reason = failureReason(operation, currentJob);
    desired.status.message = message;
    set(ConditionType.Ready, 'False', reason, message);
    set(ConditionType.Progressing, 'False', reason, message);
    return finish('Failed');
  }
  if (currentJob) {
    set(
      ConditionType.Ready,
      'False',
      readyWaitReason,
      `Imager Job ${currentJob.name} is running (${operation})`,
    );
    set(
      ConditionType.Progressing,
      'True',
      progressReason,
      `Imager Job ${currentJob.name} is running (${operation})`,
    );
    return finish(phase);
  }

  // One imager at a time per PVC: wait for any other Job on this disk (a snapshot, an older resize).
  // ... and for the attach pod to be gone (it detaches once the phase leaves Ready).
  const busy = observed.jobs.find((job) => job.state === 'active');
  const attachPod = observed.attachPods[0];
  const plan = busy
    ? { waiting: `Imager Job ${busy.name} (${busy.operation}) is still running on PVC ${claimName}` }
    : attachPod
      ? { waiting: `attach pod ${attachPod.metadata?.name} is detaching` }
      : planOperation(observed, operation);
  if ('waiting' in plan) {
    set(
      ConditionType.Ready,
      'False',
      busy || attachPod ? readyWaitReason : Reason.WaitingForSource,
      `Waiting: ${plan.waiting}`,
    );
    set(
      ConditionType.Progressing,
      'False',
      busy || attachPod ? progressReason : Reason.WaitingForSource,
      `Waiting: ${plan.waiting}`,
    );
    return finish(image ? phase : 'Pending');
  }
  desired.createJobs.push(
    buildImagerJob({
      name: currentJobName!,
      namespace: disk.metadata.namespace ?? 'default',
      owner: ownerOf(disk),
      diskName: disk.metadata.name,
      claimName,
      ...(plan.sourceClaimName ? { sourceClaimName: plan.sourceClaimName } : {}),
      ...(plan.headersSecretName ? { headersSecretName: plan.headersSecretName } : {}),
      request: plan.request,
      settings: observed.settings,
    }),
  );
  set(ConditionType.Ready, 'False', readyWaitReason, `Started imager Job ${currentJobName} (${operation})`);
  set(
    ConditionType.Progressing,
    'True',
    progressReason,
    `Started imager Job ${currentJobName} (${operation})`,
  );
  return finish(phase);
}

type SetCondition = (
  type: string,
  status: 'True' | 'False' | 'Unknown',
  reason: ReasonName,
  message: string,
) => void;

function attachFailure(pod: V1Pod): string {
  const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
  const text = terminated?.message ?? pod.status?.message ?? pod.status?.reason ?? '';
  try {
    const report = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (report.error) return `${report.error.code ?? 'error'}: ${report.error.message ?? ''}`;
  } catch {
    // not the agent's JSON report: show the text as is
  }
  return text.slice(0, 1024) || `exit code ${terminated?.exitCode ?? 'unknown'}`;
}

/**
 * The attach pod while the disk is Ready and spec.attach is set; otherwise none (deleting it detaches:
 * the agent unmounts and flushes on SIGTERM). Sets the Attached condition and status.attachment.
 */
function planAttach(observed: ObservedDisk, desired: DesiredDisk, phase: DiskPhase, set: SetCondition): void {
  const { disk } = observed;
  const attach = disk.spec.attach;
  const deleting = disk.metadata.deletionTimestamp !== undefined;
  const wanted =
    attach && phase === 'Ready' && desired.status.image && !deleting
      ? attachPodName({ ...disk, status: desired.status })
      : undefined;
  for (const pod of observed.attachPods) {
    const name = pod.metadata?.name ?? '';
    if (name !== wanted && !pod.metadata?.deletionTimestamp) desired.deletePods.push(name);
  }
  const current = wanted ? observed.attachPods.find((pod) => pod.metadata?.name === wanted) : undefined;
  if (!attach || !wanted) {
    if (observed.attachPods.length > 0) {
      set(
        ConditionType.Attached,
        'False',
        Reason.Detaching,
        `Detaching: attach pod ${observed.attachPods[0]?.metadata?.name} is stopping`,
      );
      return;
    }
    delete desired.status.attachment;
    delete desired.status.node;
    if (!attach) set(ConditionType.Attached, 'False', Reason.NotRequested, 'spec.attach is not set');
    else
      set(
        ConditionType.Attached,
        'False',
        Reason.WaitingForNode,
        `Waiting for the image before attaching on node ${attach.nodeName}`,
      );
    return;
  }
  // Snapshots and clones refuse a disk attached read-write from the moment its pod exists.
  desired.status.attachment = { nodeName: attach.nodeName, readOnly: attach.readOnly };
  desired.status.node = attach.nodeName;
  if (!current) {
    const owner = {
      apiVersion: disk.apiVersion,
      kind: 'VirtualDisk',
      name: disk.metadata.name,
      uid: disk.metadata.uid ?? '',
    };
    desired.createPods.push(
      buildAttachPod(
        { ...disk, status: desired.status },
        claimNameFor(disk.metadata.name),
        owner,
        observed.settings,
      ),
    );
    set(
      ConditionType.Attached,
      'False',
      Reason.WaitingForNode,
      `Started attach pod ${wanted} on node ${attach.nodeName}`,
    );
    return;
  }
  const podPhase = current.status?.phase;
  if (podPhase === 'Running') {
    set(
      ConditionType.Attached,
      'True',
      Reason.Mounted,
      `Attach pod ${wanted} serves the image on node ${attach.nodeName}`,
    );
  } else if (podPhase === 'Failed' || podPhase === 'Succeeded') {
    set(
      ConditionType.Attached,
      'False',
      Reason.AttachFailed,
      `Attach pod ${wanted} on node ${attach.nodeName} ended: ${attachFailure(current)}`,
    );
  } else {
    set(
      ConditionType.Attached,
      'False',
      Reason.WaitingForNode,
      `Attach pod ${wanted} is ${podPhase ?? 'Pending'} on node ${attach.nodeName}`,
    );
  }
}
