// Pure: (DiskSnapshot, its disk, the Jobs on that disk's PVC) -> imager Jobs, finalizer and status.
// A snapshot waits while its disk is not Ready, is busy with another Job, or is attached read-write
// (a snapshot of a disk being written is not consistent); deletion removes it from the image first.

import type { Condition } from '../../api/common.ts';
import type { DiskSnapshot, DiskSnapshotStatus, SnapshotPhase } from '../../api/disk-snapshot.ts';
import { DATA_MOUNT_PATH } from '../../api/imager.ts';
import { formatQuantityBytes } from '../../api/quantity.ts';
import type { VirtualDisk } from '../../api/virtual-disk.ts';
import { ConditionType, Reason, type ReasonName, setCondition } from '../conditions.ts';
import { buildImagerJob, type PodSettings } from '../imager-job.ts';
import { claimNameFor, FINALIZER, jobNameFor } from '../naming.ts';
import type { ObservedJob } from '../observed-job.ts';
import type { EventSpec } from '../virtualdisk/desired.ts';

export interface ObservedSnapshot {
  snapshot: DiskSnapshot;
  disk: VirtualDisk | undefined;
  /** Every imager Job labelled with the snapshot's disk. */
  jobs: readonly ObservedJob[];
  settings: PodSettings;
  now: string;
}

export interface DesiredSnapshot {
  addFinalizer: boolean;
  removeFinalizer: boolean;
  createJobs: ReturnType<typeof buildImagerJob>[];
  deleteJobs: string[];
  status: DiskSnapshotStatus;
  events: EventSpec[];
}

function attachedReadWriteNode(disk: VirtualDisk): string | undefined {
  const attachment = disk.status?.attachment;
  if (attachment && !attachment.readOnly) return attachment.nodeName;
  if (disk.spec.attach && !disk.spec.attach.readOnly) return disk.spec.attach.nodeName;
  return undefined;
}

/** The name of the snapshot inside the image (internal) or of the frozen file (external). */
export function snapshotNameFor(snapshot: DiskSnapshot): string {
  return snapshot.metadata.name;
}

/** Computes everything the snapshot should have; apply.ts makes it so. */
export function desiredSnapshot(observed: ObservedSnapshot): DesiredSnapshot {
  const { snapshot, disk, now } = observed;
  const generation = snapshot.metadata.generation ?? 0;
  const previous = snapshot.status ?? {};
  const desired: DesiredSnapshot = {
    addFinalizer: false,
    removeFinalizer: false,
    createJobs: [],
    deleteJobs: [],
    status: { ...previous, observedGeneration: generation },
    events: [],
  };
  const ownJobs = observed.jobs.filter(
    (job) => job.ownerKind === 'DiskSnapshot' && job.name.startsWith(`vds-${snapshot.metadata.name}-`),
  );
  let conditions: Condition[] = [...(previous.conditions ?? [])];
  const setReady = (status: 'True' | 'False' | 'Unknown', reason: ReasonName, message: string) => {
    conditions = setCondition(
      conditions,
      { type: ConditionType.Ready, status, reason, message },
      generation,
      now,
    );
  };
  const finish = (phase: SnapshotPhase): DesiredSnapshot => {
    const before = previous.conditions?.find((condition) => condition.type === ConditionType.Ready);
    const after = conditions.find((condition) => condition.type === ConditionType.Ready);
    if (after && after.reason !== before?.reason) {
      desired.events.push({
        type: after.reason === Reason.SnapshotFailed ? 'Warning' : 'Normal',
        reason: after.reason as ReasonName,
        message: after.message,
      });
    }
    desired.status.phase = phase;
    desired.status.conditions = conditions;
    if (phase !== 'Failed') delete desired.status.message;
    return desired;
  };
  const name = snapshotNameFor(snapshot);
  const mode = snapshot.spec.mode;
  const diskName = snapshot.spec.virtualDiskName;
  const job = (operation: 'snapshot-create' | 'snapshot-delete') =>
    buildImagerJob({
      name: jobNameFor('vds', snapshot.metadata.name, operation === 'snapshot-create' ? 'create' : 'delete'),
      namespace: snapshot.metadata.namespace ?? 'default',
      owner: {
        apiVersion: snapshot.apiVersion,
        kind: 'DiskSnapshot',
        name: snapshot.metadata.name,
        uid: snapshot.metadata.uid ?? '',
      },
      diskName,
      snapshotName: snapshot.metadata.name,
      claimName: claimNameFor(diskName),
      request: {
        operation,
        image: `${DATA_MOUNT_PATH}/${disk?.status?.image?.path ?? 'disk.qcow2'}`,
        snapshot: name,
        mode,
      },
      settings: observed.settings,
    });
  const createJobName = jobNameFor('vds', snapshot.metadata.name, 'create');
  const deleteJobName = jobNameFor('vds', snapshot.metadata.name, 'delete');
  const busy = observed.jobs.find((other) => other.state === 'active' && !ownJobs.includes(other));

  if (snapshot.metadata.deletionTimestamp) {
    const hasFinalizer = snapshot.metadata.finalizers?.includes(FINALIZER) ?? false;
    const diskGone = !disk || disk.metadata.deletionTimestamp !== undefined || !disk.status?.image;
    // Nothing to remove from an image when the snapshot was never taken or the disk is gone.
    const deleteJob = ownJobs.find((other) => other.name === deleteJobName);
    if (
      !previous.snapshotName ||
      diskGone ||
      deleteJob?.state === 'succeeded' ||
      deleteJob?.state === 'failed'
    ) {
      if (deleteJob?.state === 'failed') {
        desired.events.push({
          type: 'Warning',
          reason: Reason.SnapshotFailed,
          message: `Could not remove snapshot ${name} from the image: ${deleteJob.failureMessage ?? 'unknown error'}`,
        });
      }
      desired.deleteJobs = ownJobs.filter((other) => !other.isDeleting).map((other) => other.name);
      // Recorded before the Job goes: a re-run after a crash must not remove the snapshot again.
      delete desired.status.snapshotName;
      desired.status.readyToUse = false;
      desired.removeFinalizer = hasFinalizer;
      setReady('False', Reason.Deleting, 'Deleting');
      return finish('Terminating');
    }
    desired.deleteJobs = ownJobs
      .filter((other) => other.name !== deleteJobName && other.state !== 'active' && !other.isDeleting)
      .map((other) => other.name);
    if (!deleteJob && !busy && !ownJobs.some((other) => other.state === 'active'))
      desired.createJobs.push(job('snapshot-delete'));
    setReady('False', Reason.Deleting, `Removing snapshot ${name} from VirtualDisk ${diskName}`);
    return finish('Terminating');
  }
  if (!snapshot.metadata.finalizers?.includes(FINALIZER)) desired.addFinalizer = true;

  if (previous.readyToUse) {
    desired.deleteJobs = ownJobs
      .filter((other) => other.state !== 'active' && !other.isDeleting)
      .map((other) => other.name);
    setReady(
      'True',
      Reason.SnapshotTaken,
      `Snapshot ${name} of VirtualDisk ${diskName} (${mode}) is ready to use`,
    );
    return finish('Ready');
  }

  const createJob = ownJobs.find((other) => other.name === createJobName);
  if (createJob?.state === 'succeeded') {
    const result = createJob.result;
    if (result?.ok) {
      desired.status.readyToUse = true;
      desired.status.snapshotName = result.snapshot?.name ?? name;
      desired.status.creationTime = result.snapshot?.creationTime ?? now;
      const sizeBytes = result.image?.virtualSize ?? disk?.status?.image?.virtualSize;
      if (sizeBytes !== undefined) desired.status.restoreSize = formatQuantityBytes(sizeBytes);
      // As for disks: a reconcile before the informer has this status sees the Job again; delete once.
      if (!createJob.isDeleting) desired.deleteJobs.push(createJob.name);
      setReady(
        'True',
        Reason.SnapshotTaken,
        `Snapshot ${name} of VirtualDisk ${diskName} (${mode}) is ready to use`,
      );
      return finish('Ready');
    }
  }
  if (createJob && createJob.state !== 'active') {
    const result = createJob.result;
    desired.status.message =
      result && !result.ok
        ? `Imager Job ${createJob.name} failed with ${result.code}: ${result.message}`
        : `Imager Job ${createJob.name} failed: ${createJob.failureMessage || 'no result in the termination message'}`;
    setReady('False', Reason.SnapshotFailed, desired.status.message);
    return finish('Failed');
  }
  if (createJob) {
    setReady('False', Reason.WaitingForDisk, `Imager Job ${createJob.name} is taking snapshot ${name}`);
    return finish('Creating');
  }

  let waiting: string | undefined;
  if (!disk) waiting = `VirtualDisk ${diskName} does not exist`;
  else if (disk.status?.phase !== 'Ready' || !disk.status.image)
    waiting = `VirtualDisk ${diskName} is not Ready`;
  else if (attachedReadWriteNode(disk)) {
    waiting = `VirtualDisk ${diskName} is attached read-write on node ${attachedReadWriteNode(disk)}; snapshots are refused until it is detached or read-only`;
  } else if (busy)
    waiting = `Imager Job ${busy.name} (${busy.operation}) is running on VirtualDisk ${diskName}`;
  if (waiting) {
    setReady('False', Reason.WaitingForDisk, `Waiting: ${waiting}`);
    return finish('Pending');
  }
  if (mode === 'internal' && disk!.spec.format !== 'qcow2') {
    desired.status.message = `Internal snapshots need a qcow2 image; VirtualDisk ${diskName} is ${disk!.spec.format} (use mode: external)`;
    setReady('False', Reason.SnapshotFailed, desired.status.message);
    return finish('Failed');
  }
  if (mode === 'external' && disk!.spec.format !== 'qcow2') {
    desired.status.message = `External snapshots make a qcow2 overlay; VirtualDisk ${diskName} is ${disk!.spec.format}`;
    setReady('False', Reason.SnapshotFailed, desired.status.message);
    return finish('Failed');
  }
  desired.createJobs.push(job('snapshot-create'));
  setReady('False', Reason.WaitingForDisk, `Started imager Job ${createJobName} to take snapshot ${name}`);
  return finish('Creating');
}
