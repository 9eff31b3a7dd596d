// What every reconciler gets: API clients, the informer caches, settings, logging, metrics, Events,
// and the write-through overlay that keeps a reconcile from acting on a cache older than its own
// last write (informers lag writes by a watch round-trip).

import type { KubernetesObject } from '@kubernetes/client-node';
import type { EventRecorder } from './events.ts';
import type { PodSettings } from './imager-job.ts';
import type { Caches } from './informers.ts';
import type { KubeClients } from './kube.ts';
import type { Logger } from './logger.ts';
import type { PodReportReader } from './pod-reports.ts';
import type { ControllerMetrics } from './metrics.ts';

export interface ReconcileContext {
  clients: KubeClients;
  caches: Caches;
  settings: PodSettings;
  log: Logger;
  metrics: ControllerMetrics;
  events: EventRecorder;
  overlay: WriteOverlay;
  /** What running worker pods reported in their logs (progress, the attach report). */
  reports?: PodReportReader;
  /** Clock (tests pin it). */
  now: () => Date;
}

function revision(object: KubernetesObject | undefined): bigint {
  const text = object?.metadata?.resourceVersion;
  // resourceVersions are opaque; etcd's are integers, and this is only an optimisation (the imager
  // and the deterministic names make acting on a stale object harmless), so non-numbers rank lowest.
  return text && /^\d+$/.test(text) ? BigInt(text) : -1n;
}

/** The newest version of each object this controller wrote, until the cache catches up. */
export class WriteOverlay {
  private readonly objects = new Map<string, KubernetesObject>();

  /** Remembers the object an API write returned. */
  remember(object: KubernetesObject | undefined): void {
    const uid = object?.metadata?.uid;
    if (!uid) return;
    const known = this.objects.get(uid);
    if (!known || revision(object) >= revision(known)) this.objects.set(uid, object);
  }

  /** The newer of the cached object and the last written one. */
  freshest<T extends KubernetesObject>(cached: T): T {
    const uid = cached.metadata?.uid;
    if (!uid) return cached;
    const written = this.objects.get(uid);
    if (!written) return cached;
    if (revision(cached) >= revision(written)) {
      this.objects.delete(uid);
      return cached;
    }
    return written as T;
  }

  forget(uid: string | undefined): void {
    if (uid) this.objects.delete(uid);
  }

  /**
   * Objects (by uid) this controller asked the API to delete, until the cache shows them deleting or
   * gone: a reconcile that runs before the watch event arrives must not delete them again.
   */
  private readonly deleted = new Map<string, number>();

  rememberDeleted(uid: string | undefined, nowMs: number): void {
    if (!uid) return;
    // Old entries go here rather than on a timer: the map only grows by deletes, each one prunes.
    for (const [known, atMs] of this.deleted) if (nowMs - atMs > DELETE_MEMORY_MS) this.deleted.delete(known);
    this.deleted.set(uid, nowMs);
  }

  /** True while a delete of `uid` this controller sent is younger than DELETE_MEMORY_MS. */
  wasDeleted(uid: string | undefined, nowMs: number): boolean {
    const atMs = uid === undefined ? undefined : this.deleted.get(uid);
    return atMs !== undefined && nowMs - atMs <= DELETE_MEMORY_MS;
  }
}

/** How long a sent delete is remembered: far longer than a watch event takes, short enough not to matter. */
const DELETE_MEMORY_MS = 5 * 60_000;
