// Reads everything desired.ts needs for one VirtualDisk from the informer caches (no API calls):
// the disk (or the newer copy this controller just wrote), its PVC, the Jobs on its PVC with their
// pods' results, and its clone/restore source.

import type { V1Job, V1Pod } from '@kubernetes/client-node';
import { type DiskSnapshot, parseDiskSnapshot } from '../../api/disk-snapshot.ts';
import { parseVirtualDisk, type VirtualDisk } from '../../api/virtual-disk.ts';
import { ATTACH_ROLE, LABEL_ROLE } from '../attach-pod.ts';
import type { ReconcileContext } from '../context.ts';
import { claimNameFor, LABEL_DISK, labelValue } from '../naming.ts';
import { type ObservedJob, observeJob } from '../observed-job.ts';
import { requiredClaimBytes } from '../sizing.ts';
import type { ObservedDisk } from './desired.ts';

/** A cached VirtualDisk parsed (undefined when absent or when its spec does not parse). */
export function cachedDisk(
  context: ReconcileContext,
  namespace: string,
  name: string,
): VirtualDisk | undefined {
  const cached = context.caches.disks.get(name, namespace);
  if (!cached) return undefined;
  try {
    return parseVirtualDisk(context.overlay.freshest(cached));
  } catch (err) {
    context.log.warn({ err, disk: `${namespace}/${name}` }, 'Skipped VirtualDisk whose spec does not parse');
    return undefined;
  }
}

/** A cached DiskSnapshot parsed. */
export function cachedSnapshot(
  context: ReconcileContext,
  namespace: string,
  name: string,
): DiskSnapshot | undefined {
  const cached = context.caches.snapshots.get(name, namespace);
  if (!cached) return undefined;
  try {
    return parseDiskSnapshot(context.overlay.freshest(cached));
  } catch (err) {
    context.log.warn(
      { err, snapshot: `${namespace}/${name}` },
      'Skipped DiskSnapshot whose spec does not parse',
    );
    return undefined;
  }
}

/** The imager Jobs (with results) that run on `diskName`'s PVC. */
export function jobsOnDisk(context: ReconcileContext, namespace: string, diskName: string): ObservedJob[] {
  const value = labelValue(diskName);
  const jobs = context.caches.jobs
    .list(namespace)
    .filter((job: V1Job) => job.metadata?.labels?.[LABEL_DISK] === value);
  if (jobs.length === 0) return [];
  const pods = context.caches.pods
    .list(namespace)
    .filter((pod: V1Pod) => pod.metadata?.labels?.[LABEL_DISK] === value);
  const nowMs = context.now().getTime();
  return jobs.map((job) => {
    const observed = observeJob(job, pods, (pod) => context.reports?.get(pod.metadata?.uid)?.progress);
    // A Job this controller has just deleted counts as deleting before the watch says so.
    if (!observed.isDeleting && context.overlay.wasDeleted(job.metadata?.uid, nowMs))
      return { ...observed, isDeleting: true };
    return observed;
  });
}

export async function observeDisk(
  context: ReconcileContext,
  namespace: string,
  name: string,
): Promise<ObservedDisk | undefined> {
  const disk = cachedDisk(context, namespace, name);
  if (!disk) return undefined;
  const source = disk.spec.source;
  const sourceSnapshot = source.snapshot
    ? cachedSnapshot(context, namespace, source.snapshot.name)
    : undefined;
  return {
    disk,
    claim: context.caches.claims.get(claimNameFor(name), namespace),
    jobs: jobsOnDisk(context, namespace, name),
    attachPods: context.caches.pods
      .list(namespace)
      .filter(
        (pod: V1Pod) =>
          pod.metadata?.labels?.[LABEL_DISK] === labelValue(name) &&
          pod.metadata?.labels?.[LABEL_ROLE] === ATTACH_ROLE,
      ),
    requiredClaimBytes: await requiredClaimBytes(disk.spec),
    sourceDisk: source.virtualDisk ? cachedDisk(context, namespace, source.virtualDisk.name) : undefined,
    sourceSnapshot,
    sourceSnapshotDisk: sourceSnapshot
      ? cachedDisk(context, namespace, sourceSnapshot.spec.virtualDiskName)
      : undefined,
    settings: context.settings,
    ...(context.reports ? { reports: context.reports } : {}),
    now: context
      .now()
      .toISOString()
      .replace(/\.\d{3}Z$/, 'Z'),
  };
}
