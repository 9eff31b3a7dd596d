// Pure: (VirtualDisk, observed state) -> the PVC, imager Jobs, finalizer and status the disk should
// have. No client, no clock (`now` comes in), so unit tests are tables and a killed reconcile re-runs
// to the same answer. Order of work: finalizer, PVC, one imager Job at a time per PVC, status.

import type { V1PersistentVolumeClaim, V1Pod } from '@kubernetes/client-node';
import type { Condition } from '../../api/common.ts';
import type { DiskSnapshot } from '../../api/disk-snapshot.ts';
import { formatQuantityBytes, quantityBytes } from '../../api/quantity.ts';
import type { ImagerResult } from '../../api/imager.ts';
import type { DiskPhase, ImageStatus, VirtualDisk, VirtualDiskStatus } from '../../api/virtual-disk.ts';

type ImagerImage = NonNullable<Extract<ImagerResult, { ok: true }>['image']>;
import { ConditionType, Reason, type ReasonName, setCondition } from '../conditions.ts';
import { buildImagerJob, type PodSettings } from '../imager-job.ts';
import { claimNameFor, FINALIZER, jobNameFor } from '../naming.ts';
import type { ObservedJob } from '../observed-job.ts';
import type { PodReportReader } from '../pod-reports.ts';
import { planAttach } from './attach.ts';
import { buildClaim, claimRequestBytes } from './claim.ts';
import {
  failureMessage,
  failureReason,
  initialOperation,
  type Operation,
  ownerOf,
  PROGRESS_REASON,
  planOperation,
} from './plan.ts';

export { buildClaim } from './claim.ts';

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
  /** Live reports of running pods, by pod uid (absent in tests that need none). */
  reports?: PodReportReader;
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

/** status.image from an imager result; the import checksum is kept across later operations. */
function imageStatusOf(image: ImagerImage, previousSha256: string | undefined): ImageStatus {
  const sha256 = image.sha256 ?? previousSha256;
  return {
    path: image.path,
    format: image.format,
    virtualSize: image.virtualSize,
    ...(image.actualSize !== undefined ? { actualSize: image.actualSize } : {}),
    ...(image.clusterSize !== undefined ? { clusterSize: image.clusterSize } : {}),
    ...(image.snapshots ? { snapshots: image.snapshots.slice(0, 256) } : {}),
    ...(sha256 ? { sha256 } : {}),
  };
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

  // Snapshot Jobs change the image (snapshot table, an external overlay): adopt what they report.
  for (const job of observed.jobs) {
    if (
      image &&
      job.ownerKind === 'DiskSnapshot' &&
      job.state === 'succeeded' &&
      job.result?.ok &&
      job.result.image
    ) {
      desired.status.image = imageStatusOf(job.result.image, image.sha256);
    }
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
      desired.status.progress = '100%';
      const made = imageStatusOf(result.image, image?.sha256);
      desired.status.image = made;
      // A reconcile that runs before the informer has this status (the Job's own delete event re-queues
      // the disk) sees the Job again: one delete is enough.
      if (!currentJob.isDeleting) desired.deleteJobs.push(currentJob.name);
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
    desired.status.progress = `${currentJob.progress ?? 0}%`;
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
  desired.status.progress = '0%';
  set(ConditionType.Ready, 'False', readyWaitReason, `Started imager Job ${currentJobName} (${operation})`);
  set(
    ConditionType.Progressing,
    'True',
    progressReason,
    `Started imager Job ${currentJobName} (${operation})`,
  );
  return finish(phase);
}
