// The only place DiskSnapshot reconciles write to the API: finalizer, imager Jobs (by deterministic
// name), status, recorded Jobs deleted after the status that records them, finalizer removal last.

import type { DiskSnapshot } from '../../api/disk-snapshot.ts';
import {
  applyTargetsOf,
  createImagerJobs,
  deleteImagerJobs,
  emitEventsAndRelease,
  patchFinalizer,
  patchStatus,
} from '../apply-common.ts';
import type { ReconcileContext } from '../context.ts';
import type { Logger } from '../logger.ts';
import type { DesiredSnapshot } from './desired.ts';

export async function applySnapshot(
  context: ReconcileContext,
  snapshot: DiskSnapshot,
  desired: DesiredSnapshot,
  log: Logger,
): Promise<void> {
  const { namespace, target, eventTarget } = applyTargetsOf('disksnapshots', 'DiskSnapshot', snapshot);
  if (desired.addFinalizer) {
    await patchFinalizer(context, target, true);
  }
  await createImagerJobs(context, desired.createJobs, eventTarget, log);
  await patchStatus(
    context,
    target,
    snapshot.status as Record<string, unknown> | undefined,
    desired.status as Record<string, unknown>,
  );
  await deleteImagerJobs(context, namespace, desired.deleteJobs, log);
  await emitEventsAndRelease(context, target, eventTarget, desired, snapshot.metadata.uid, log);
}
