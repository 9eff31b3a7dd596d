// List+watch caches (client-node's makeInformer / ListWatch) for every kind the controller reads.
// client-node stops an informer on a watch or list error; we restart it with capped, jittered
// backoff, and a 410 Gone relists from scratch (ListWatch clears its resourceVersion itself).

import {
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
  type Informer,
  type V1Job,
  type V1PersistentVolumeClaim,
  type V1Pod,
  ListWatch,
  Watch,
} from '@kubernetes/client-node';
import type { KubeConfig } from '@kubernetes/client-node';
import { API_GROUP, API_VERSION } from '../api/common.ts';
import type { KubeClients } from './kube.ts';
import type { Logger } from './logger.ts';
import { MANAGED_SELECTOR } from './naming.ts';

export type Cache<T extends KubernetesObject> = Informer<T> & ObjectCache<T>;

export interface Caches {
  disks: Cache<KubernetesObject>;
  snapshots: Cache<KubernetesObject>;
  claims: Cache<V1PersistentVolumeClaim>;
  jobs: Cache<V1Job>;
  pods: Cache<V1Pod>;
}

export interface InformerHandle<T extends KubernetesObject> {
  cache: Cache<T>;
  stop(): Promise<void>;
}

/** The apiserver ends each watch after 5–10 minutes (as client-go asks); the informer resumes it. */
const WATCH_TIMEOUT_MIN_SECONDS = 300;
/** No byte for this long (bookmarks arrive about once a minute) means the connection is dead. */
const WATCH_INACTIVITY_MS = 11 * 60_000;

/**
 * client-node's Watch, asking for bookmarks and a server-side timeout: an idle watch then stays open
 * (client-node otherwise drops it after 30 s without events and reconnects), and bookmarks keep the
 * resourceVersion fresh, so a reconnect after etcd compaction resumes instead of relisting (410).
 */
export class BookmarkWatch extends Watch {
  constructor(kubeConfig: KubeConfig) {
    super(kubeConfig);
    // client-node keeps its inactivity timeout in a plain (TypeScript-private) field.
    (this as unknown as { requestTimeoutMs: number }).requestTimeoutMs = WATCH_INACTIVITY_MS;
  }

  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    const timeoutSeconds = WATCH_TIMEOUT_MIN_SECONDS + Math.floor(Math.random() * WATCH_TIMEOUT_MIN_SECONDS);
    return super.watch(path, { ...queryParams, allowWatchBookmarks: true, timeoutSeconds }, callback, done);
  }
}

const RESTART_BASE_MS = 500;
const RESTART_MAX_MS = 30_000;

/** Starts an informer that restarts itself after errors; resolves once the first list is cached. */
export async function startInformer<T extends KubernetesObject>(
  clients: KubeClients,
  path: string,
  list: () => Promise<KubernetesListObject<T>>,
  labelSelector: string | undefined,
  log: Logger,
  onChange: (object: T) => void,
): Promise<InformerHandle<T>> {
  const cache = new ListWatch<T>(path, new BookmarkWatch(clients.kubeConfig), list, false, labelSelector);
  let stopped = false;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  const emit = (object: T) => {
    failures = 0;
    onChange(object);
  };
  cache.on('add', emit);
  cache.on('update', emit);
  cache.on('delete', emit);
  cache.on('error', (err: unknown) => {
    if (stopped) return;
    const delayMs = Math.min(RESTART_BASE_MS * 2 ** failures, RESTART_MAX_MS) * (0.8 + Math.random() * 0.4);
    failures += 1;
    log.warn({ err, path, delayMs: Math.round(delayMs), failures }, 'Watch failed, restarting informer');
    timer = setTimeout(() => {
      if (!stopped)
        cache
          .start()
          .catch((startErr: unknown) => log.warn({ err: startErr, path }, 'Informer restart failed'));
    }, delayMs);
  });
  await cache.start();
  return {
    cache,
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await cache.stop();
    },
  };
}

/** Watch paths, all namespaces or one. */
function pathOf(prefix: string, resource: string, namespace: string | undefined): string {
  return namespace ? `${prefix}/namespaces/${namespace}/${resource}` : `${prefix}/${resource}`;
}

/** Starts the five caches; `onChange` receives every add/update/delete with its kind. */
export async function startCaches(
  clients: KubeClients,
  namespace: string | undefined,
  log: Logger,
  onChange: (kind: keyof Caches, object: KubernetesObject) => void,
): Promise<{ caches: Caches; stop: () => Promise<void> }> {
  const group = `/apis/${API_GROUP}/${API_VERSION}`;
  const customList = (plural: string) => async () =>
    (namespace
      ? await clients.custom.listNamespacedCustomObject({
          group: API_GROUP,
          version: API_VERSION,
          namespace,
          plural,
        })
      : await clients.custom.listClusterCustomObject({
          group: API_GROUP,
          version: API_VERSION,
          plural,
        })) as KubernetesListObject<KubernetesObject>;
  const handles = await Promise.all([
    startInformer(
      clients,
      pathOf(group, 'virtualdisks', namespace),
      customList('virtualdisks'),
      undefined,
      log,
      (o) => onChange('disks', o),
    ),
    startInformer(
      clients,
      pathOf(group, 'disksnapshots', namespace),
      customList('disksnapshots'),
      undefined,
      log,
      (o) => onChange('snapshots', o),
    ),
    startInformer<V1PersistentVolumeClaim>(
      clients,
      pathOf('/api/v1', 'persistentvolumeclaims', namespace),
      () =>
        namespace
          ? clients.core.listNamespacedPersistentVolumeClaim({ namespace, labelSelector: MANAGED_SELECTOR })
          : clients.core.listPersistentVolumeClaimForAllNamespaces({ labelSelector: MANAGED_SELECTOR }),
      MANAGED_SELECTOR,
      log,
      (o) => onChange('claims', o),
    ),
    startInformer<V1Job>(
      clients,
      pathOf('/apis/batch/v1', 'jobs', namespace),
      () =>
        namespace
          ? clients.batch.listNamespacedJob({ namespace, labelSelector: MANAGED_SELECTOR })
          : clients.batch.listJobForAllNamespaces({ labelSelector: MANAGED_SELECTOR }),
      MANAGED_SELECTOR,
      log,
      (o) => onChange('jobs', o),
    ),
    startInformer<V1Pod>(
      clients,
      pathOf('/api/v1', 'pods', namespace),
      () =>
        namespace
          ? clients.core.listNamespacedPod({ namespace, labelSelector: MANAGED_SELECTOR })
          : clients.core.listPodForAllNamespaces({ labelSelector: MANAGED_SELECTOR }),
      MANAGED_SELECTOR,
      log,
      (o) => onChange('pods', o),
    ),
  ]);
  const [disks, snapshots, claims, jobs, pods] = handles;
  return {
    caches: {
      disks: disks.cache,
      snapshots: snapshots.cache,
      claims: claims.cache,
      jobs: jobs.cache,
      pods: pods.cache,
    },
    stop: async () => {
      await Promise.all(handles.map((handle) => handle.stop()));
    },
  };
}
