// The only place VirtualDisk reconciles write to the API. Order matters for a controller killed at
// any line: finalizer before children (so nothing is orphaned), children by deterministic name (a
// re-run finds them), status before deleting recorded Jobs, finalizer removal last.

import type { VirtualDisk } from '../../api/virtual-disk.ts';
import { formatQuantityBytes } from '../../api/quantity.ts';
import {
  applyTargetsOf,
  createImagerJobs,
  deleteImagerJobs,
  emitEventsAndRelease,
  patchFinalizer,
  patchStatus,
} from '../apply-common.ts';
import { Reason } from '../conditions.ts';
import type { ReconcileContext } from '../context.ts';
import { apiMessageOf, createIfAbsent, ignoreNotFound, MERGE_PATCH } from '../kube.ts';
import type { Logger } from '../logger.ts';
import type { DesiredDisk } from './desired.ts';

export async function applyDisk(
  context: ReconcileContext,
  disk: VirtualDisk,
  desired: DesiredDisk,
  log: Logger,
): Promise<void> {
  const { namespace, target, eventTarget } = applyTargetsOf('virtualdisks', 'VirtualDisk', disk);
  const { core } = context.clients;

  if (desired.addFinalizer) {
    await patchFinalizer(context, target, true);
    log.debug('Added finalizer');
  }
  if (desired.createClaim) {
    context.metrics.apiRequestsTotal.inc({ verb: 'create', resource: 'persistentvolumeclaims' });
    if (
      await createIfAbsent(
        core.createNamespacedPersistentVolumeClaim({ namespace, body: desired.createClaim }),
      )
    ) {
      const storage = desired.createClaim.spec?.resources?.requests?.storage;
      log.info({ pvc: desired.createClaim.metadata?.name, storage }, 'Created PVC');
      context.events.emit(
        eventTarget,
        'Normal',
        Reason.CreatedClaim,
        `Created PVC ${desired.createClaim.metadata?.name} of ${storage}`,
      );
    }
  }
  if (desired.expandClaimToBytes !== undefined && disk.status?.claimName) {
    const storage = formatQuantityBytes(desired.expandClaimToBytes);
    try {
      context.metrics.apiRequestsTotal.inc({ verb: 'patch', resource: 'persistentvolumeclaims' });
      await core.patchNamespacedPersistentVolumeClaim(
        { name: disk.status.claimName, namespace, body: { spec: { resources: { requests: { storage } } } } },
        MERGE_PATCH,
      );
      log.info({ pvc: disk.status.claimName, storage }, 'Expanded PVC');
      context.events.emit(
        eventTarget,
        'Normal',
        Reason.ExpandedClaim,
        `Requested ${storage} for PVC ${disk.status.claimName}`,
      );
    } catch (err) {
      // A storage class without expansion refuses; the image may still fit in the headroom.
      log.warn({ err, pvc: disk.status.claimName, storage }, 'PVC expansion refused');
      context.events.emit(
        eventTarget,
        'Warning',
        Reason.ExpandedClaim,
        `Could not expand PVC ${disk.status.claimName} to ${storage}: ${apiMessageOf(err)}`,
      );
    }
  }
  await createImagerJobs(context, desired.createJobs, eventTarget, log);
  for (const pod of desired.createPods) {
    context.metrics.apiRequestsTotal.inc({ verb: 'create', resource: 'pods' });
    if (await createIfAbsent(core.createNamespacedPod({ namespace, body: pod }))) {
      log.info({ pod: pod.metadata?.name, node: pod.spec?.nodeName }, 'Created attach Pod');
      context.events.emit(
        eventTarget,
        'Normal',
        Reason.WaitingForNode,
        `Created attach pod ${pod.metadata?.name} on node ${pod.spec?.nodeName}`,
      );
    }
  }
  for (const name of desired.deletePods) {
    context.metrics.apiRequestsTotal.inc({ verb: 'delete', resource: 'pods' });
    await ignoreNotFound(core.deleteNamespacedPod({ name, namespace }));
    log.info({ pod: name }, 'Deleted attach Pod');
  }
  await patchStatus(
    context,
    target,
    disk.status as Record<string, unknown> | undefined,
    desired.status as Record<string, unknown>,
  );
  await deleteImagerJobs(context, namespace, desired.deleteJobs, log);
  const claimName = disk.status?.claimName ?? desired.status.claimName;
  if (desired.deleteClaim && claimName) {
    context.metrics.apiRequestsTotal.inc({ verb: 'delete', resource: 'persistentvolumeclaims' });
    await ignoreNotFound(core.deleteNamespacedPersistentVolumeClaim({ name: claimName, namespace }));
    log.info({ pvc: claimName }, 'Deleted PVC');
  }
  if (desired.releaseClaim && claimName) {
    context.metrics.apiRequestsTotal.inc({ verb: 'patch', resource: 'persistentvolumeclaims' });
    await ignoreNotFound(
      core.patchNamespacedPersistentVolumeClaim(
        { name: claimName, namespace, body: { metadata: { ownerReferences: null } } },
        MERGE_PATCH,
      ),
    );
    log.info({ pvc: claimName }, 'Released PVC (deletionPolicy Retain)');
  }
  await emitEventsAndRelease(context, target, eventTarget, desired, disk.metadata.uid, log);
}
