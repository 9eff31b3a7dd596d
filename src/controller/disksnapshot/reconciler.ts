// DiskSnapshot reconcile: observe (caches) -> desired (pure) -> apply (writes); idempotent.

import type { ReconcileContext } from '../context.ts';
import { applySnapshot } from './apply.ts';
import { desiredSnapshot } from './desired.ts';
import { observeSnapshot } from './observe.ts';

export async function reconcileDiskSnapshot(
  context: ReconcileContext,
  namespace: string,
  name: string,
): Promise<void> {
  const observed = observeSnapshot(context, namespace, name);
  if (!observed) return;
  const { snapshot } = observed;
  const log = context.log.child({
    kind: 'DiskSnapshot',
    snapshot: `${namespace}/${name}`,
    uid: snapshot.metadata.uid,
    generation: snapshot.metadata.generation,
  });
  await applySnapshot(context, snapshot, desiredSnapshot(observed), log);
}
