// Writes both kinds' apply.ts share: finalizer and status merge patches on vdisk.dev objects, imager
// Job create (409 = already there: a restarted controller never duplicates) and delete. Every write
// bumps vdisk_api_requests_total and feeds the write overlay.

import type { KubernetesObject, V1Job } from '@kubernetes/client-node';
import { API_GROUP, API_VERSION, type ObjectMeta } from '../api/common.ts';
import { Reason } from './conditions.ts';
import type { ReconcileContext } from './context.ts';
import type { EventTarget } from './events.ts';
import { createIfAbsent, ignoreNotFound, MERGE_PATCH } from './kube.ts';
import type { Logger } from './logger.ts';
import { FINALIZER, LABEL_OPERATION } from './naming.ts';
import type { EventSpec } from './virtualdisk/desired.ts';

export interface CustomTarget {
  plural: 'virtualdisks' | 'disksnapshots';
  namespace: string;
  name: string;
  resourceVersion: string | undefined;
  finalizers: readonly string[] | undefined;
}

/** What an apply writes to: the object's namespace (default `default`), its patch target and its Event target. */
export function applyTargetsOf(
  plural: CustomTarget['plural'],
  kind: string,
  object: { apiVersion: string; metadata: ObjectMeta },
): { namespace: string; target: CustomTarget; eventTarget: EventTarget } {
  const namespace = object.metadata.namespace ?? 'default';
  return {
    namespace,
    target: {
      plural,
      namespace,
      name: object.metadata.name,
      resourceVersion: object.metadata.resourceVersion,
      finalizers: object.metadata.finalizers,
    },
    eventTarget: { apiVersion: object.apiVersion, kind, metadata: { ...object.metadata, namespace } },
  };
}

/**
 * Adds or removes our finalizer; the resourceVersion makes a concurrent change fail with 409.
 * Updates `target` (resourceVersion, finalizers) to what the API returned.
 */
export async function patchFinalizer(
  context: ReconcileContext,
  target: CustomTarget,
  add: boolean,
): Promise<void> {
  const current = target.finalizers ?? [];
  const finalizers = add
    ? [...current.filter((f) => f !== FINALIZER), FINALIZER]
    : current.filter((f) => f !== FINALIZER);
  context.metrics.apiRequestsTotal.inc({ verb: 'patch', resource: target.plural });
  const call = context.clients.custom.patchNamespacedCustomObject(
    {
      group: API_GROUP,
      version: API_VERSION,
      namespace: target.namespace,
      plural: target.plural,
      name: target.name,
      body: {
        metadata: {
          finalizers,
          ...(target.resourceVersion ? { resourceVersion: target.resourceVersion } : {}),
        },
      },
    },
    MERGE_PATCH,
  );
  // Removing the last finalizer of a deleted object deletes it: a 404 afterwards is success.
  const updated = (await (add ? call : ignoreNotFound(call))) as KubernetesObject | undefined;
  context.overlay.remember(updated);
  target.resourceVersion = updated?.metadata?.resourceVersion;
  target.finalizers = finalizers;
}

/**
 * Merge-patches the status subresource to `next`; keys present before and absent now are sent as null
 * (a merge patch otherwise keeps them). Skipped when nothing changed.
 */
export async function patchStatus(
  context: ReconcileContext,
  target: CustomTarget,
  previous: Record<string, unknown> | undefined,
  next: Record<string, unknown>,
): Promise<void> {
  const patch: Record<string, unknown> = { ...next };
  for (const key of Object.keys(previous ?? {})) if (!(key in next)) patch[key] = null;
  if (JSON.stringify(sortKeys(previous ?? {})) === JSON.stringify(sortKeys(next))) return;
  context.metrics.apiRequestsTotal.inc({ verb: 'patch', resource: `${target.plural}/status` });
  const updated = (await ignoreNotFound(
    context.clients.custom.patchNamespacedCustomObjectStatus(
      {
        group: API_GROUP,
        version: API_VERSION,
        namespace: target.namespace,
        plural: target.plural,
        name: target.name,
        body: { status: patch },
      },
      MERGE_PATCH,
    ),
  )) as KubernetesObject | undefined;
  context.overlay.remember(updated);
  // Later writes in this reconcile (finalizer removal) must not conflict with our own status write.
  target.resourceVersion = updated?.metadata?.resourceVersion;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => [k, sortKeys(v)]),
  );
}

/** Creates a Job unless one of that name exists; returns whether this call created it. */
export async function createJob(context: ReconcileContext, job: V1Job): Promise<boolean> {
  const namespace = job.metadata?.namespace ?? 'default';
  context.metrics.apiRequestsTotal.inc({ verb: 'create', resource: 'jobs' });
  const created = await createIfAbsent(context.clients.batch.createNamespacedJob({ namespace, body: job }));
  if (created)
    context.metrics.jobsCreatedTotal.inc({ operation: job.metadata?.labels?.[LABEL_OPERATION] ?? 'unknown' });
  return created;
}

/** Deletes a Job and (in the background) its pods; a missing Job is fine. */
export async function deleteJob(context: ReconcileContext, namespace: string, name: string): Promise<void> {
  context.metrics.apiRequestsTotal.inc({ verb: 'delete', resource: 'jobs' });
  const uid = context.caches.jobs.get(name, namespace)?.metadata?.uid;
  await ignoreNotFound(
    context.clients.batch.deleteNamespacedJob({ name, namespace, propagationPolicy: 'Background' }),
  );
  context.overlay.rememberDeleted(uid, context.now().getTime());
}

/** Creates each imager Job (by deterministic name); the ones this call created are logged and get an Event. */
export async function createImagerJobs(
  context: ReconcileContext,
  jobs: readonly V1Job[],
  eventTarget: EventTarget,
  log: Logger,
): Promise<void> {
  for (const job of jobs) {
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
}

/** Deletes the imager Jobs the status just written no longer needs; each is logged. */
export async function deleteImagerJobs(
  context: ReconcileContext,
  namespace: string,
  names: readonly string[],
  log: Logger,
): Promise<void> {
  for (const name of names) {
    await deleteJob(context, namespace, name);
    log.info({ job: name }, 'Deleted imager Job');
  }
}

/**
 * The last steps of every apply: the reconcile's Events, then (when asked) finalizer removal, which
 * lets the apiserver delete the object, so the write overlay forgets it.
 */
export async function emitEventsAndRelease(
  context: ReconcileContext,
  target: CustomTarget,
  eventTarget: EventTarget,
  desired: { events: readonly EventSpec[]; removeFinalizer: boolean },
  uid: string | undefined,
  log: Logger,
): Promise<void> {
  for (const event of desired.events)
    context.events.emit(eventTarget, event.type, event.reason, event.message);
  if (desired.removeFinalizer) {
    await patchFinalizer(context, target, false);
    context.overlay.forget(uid);
    log.info('Removed finalizer');
  }
}
