// Reads what desiredSnapshot needs from the caches: the snapshot, its disk, and the Jobs on the
// disk's PVC (with results). No API calls.

import type { ReconcileContext } from '../context.ts';
import { cachedDisk, cachedSnapshot, jobsOnDisk } from '../virtualdisk/observe.ts';
import type { ObservedSnapshot } from './desired.ts';

export function observeSnapshot(
  context: ReconcileContext,
  namespace: string,
  name: string,
): ObservedSnapshot | undefined {
  const snapshot = cachedSnapshot(context, namespace, name);
  if (!snapshot) return undefined;
  const diskName = snapshot.spec.virtualDiskName;
  return {
    snapshot,
    disk: cachedDisk(context, namespace, diskName),
    jobs: jobsOnDisk(context, namespace, diskName),
    settings: context.settings,
    now: context
      .now()
      .toISOString()
      .replace(/\.\d{3}Z$/, 'Z'),
  };
}
