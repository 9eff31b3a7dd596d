// The only place DiskSnapshot reconciles write to the API: finalizer, imager Jobs (by deterministic
// name), status, recorded Jobs deleted after the status that records them, finalizer removal last.

import type { DiskSnapshot } from '../../api/disk-snapshot.ts';
import { createJob, deleteJob, patchFinalizer, patchStatus } from '../apply-common.ts';
import { Reason } from '../conditions.ts';
import type { ReconcileContext } from '../context.ts';
import type { Logger } from '../logger.ts';
import type { DesiredSnapshot } from './desired.ts';

export async function applySnapshot(
  context: ReconcileContext,
  snapshot: DiskSnapshot,
  desired: DesiredSnapshot,
  log: Logger,
): Promise<void> {
  const namespace = snapshot.metadata.namespace ?? 'default';
  const target = {
    plural: 'disksnapshots' as const,
    namespace,
    name: snapshot.metadata.name,
    resourceVersion: snapshot.metadata.resourceVersion,
    finalizers: snapshot.metadata.finalizers,
  };
  const eventTarget = {
    apiVersion: snapshot.apiVersion,
    kind: 'DiskSnapshot',
    metadata: { ...snapshot.metadata, namespace },
  };
  if (desired.addFinalizer) {
    await patchFinalizer(context, target, true);
  }
  for (const job of desired.createJobs) {
    if (await createJob(context, job)) {
      log.info({ job: job.metadata?.name }, 'Created imager Job');
      context.events.emit(
        eventTarget,
        'Normal',
        Reason.CreatedJob,
        `Created imager Job ${job.metadata?.name}`,
      );
    }
  }
  await patchStatus(
    context,
    target,
    snapshot.status as Record<string, unknown> | undefined,
    desired.status as Record<string, unknown>,
  );
  for (const name of desired.deleteJobs) {
    await deleteJob(context, namespace, name);
    log.info({ job: name }, 'Deleted imager Job');
  }
  for (const event of desired.events)
    context.events.emit(eventTarget, event.type, event.reason, event.message);
  if (desired.removeFinalizer) {
    await patchFinalizer(context, target, false);
    context.overlay.forget(snapshot.metadata.uid);
    log.info('Removed finalizer');
  }
}
