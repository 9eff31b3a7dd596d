// VirtualDisk reconcile: observe (caches) -> desired (pure) -> apply (writes). Level-based and
// idempotent: it never asks which event fired, so it can be killed at any line and run again.

import type { ReconcileContext } from '../context.ts';
import { applyDisk } from './apply.ts';
import { desiredDisk } from './desired.ts';
import { observeDisk } from './observe.ts';

/** Reconciles one VirtualDisk; a missing one needs nothing (owner references clean up children). */
export async function reconcileVirtualDisk(
  context: ReconcileContext,
  namespace: string,
  name: string,
): Promise<void> {
  const observed = await observeDisk(context, namespace, name);
  if (!observed) return;
  const { disk } = observed;
  const log = context.log.child({
    kind: 'VirtualDisk',
    disk: `${namespace}/${name}`,
    uid: disk.metadata.uid,
    generation: disk.metadata.generation,
  });
  const desired = desiredDisk(observed);
  await applyDisk(context, disk, desired, log);
}
