// Watches the pods bound to the local node (fieldSelector spec.nodeName) and keeps one PodWorker per
// pod; on graceful deletion it stops the pod's processes and then removes the pod object
// (delete with gracePeriodSeconds 0), which is the kubelet's part of pod deletion.
import { CoreV1Api, type KubeConfig, ListWatch, type V1Pod, Watch } from '@kubernetes/client-node';
import { join } from 'node:path';
import { httpStatus, JSON_PATCH, type LocalNodeLog, restartOnError } from './api.ts';
import { podEventRecorder } from './events.ts';
import type { ContainerLogSource } from './kubelet-server.ts';
import type { DataLookup } from './pod-spec.ts';
import { PodWorker, type PodWorkerContext } from './pod-worker.ts';

/** Settings of {@link PodRunner}. */
export type PodRunnerOptions = Omit<PodWorkerContext, 'core' | 'lookup' | 'log' | 'recordEvent'> & {
  nodeName: string;
};

/** Longest grace period honoured when the local node itself stops, in ms. */
const NODE_STOP_GRACE_MS = 5_000;

/** Runs the pods scheduled to one node. */
export class PodRunner {
  readonly #core: CoreV1Api;
  readonly #context: PodWorkerContext;
  readonly #pods: ListWatch<V1Pod>;
  readonly #workers = new Map<string, PodWorker>();
  readonly #deleting = new Set<string>();
  readonly #log: LocalNodeLog;
  #stopped = false;

  constructor(kubeConfig: KubeConfig, options: PodRunnerOptions, log: LocalNodeLog) {
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#log = log;
    this.#context = {
      ...options,
      core: this.#core,
      lookup: (namespace) => this.#lookup(namespace),
      log,
      recordEvent: podEventRecorder(this.#core, options.nodeName),
    };
    const fieldSelector = `spec.nodeName=${options.nodeName}`;
    this.#pods = new ListWatch<V1Pod>(
      '/api/v1/pods',
      new Watch(kubeConfig),
      () => this.#core.listPodForAllNamespaces({ fieldSelector }),
      false,
      undefined,
      fieldSelector,
    );
    this.#pods.on('add', (pod) => this.#handle(pod));
    this.#pods.on('update', (pod) => this.#handle(pod));
    this.#pods.on('delete', (pod) => this.#forget(pod));
    restartOnError(this.#pods, () => this.#stopped, log, 'pods');
  }

  /** Starts watching; pods already bound to the node are picked up by the initial list. */
  async start(): Promise<void> {
    await this.#pods.start();
  }

  /** Stops watching and stops every running pod (grace capped at 5 s); the pod objects stay. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#pods.stop();
    await Promise.all([...this.#workers.values()].map((worker) => worker.terminate(NODE_STOP_GRACE_MS)));
  }

  /** PIDs of every container process running now (for leak checks). */
  runningPids(): number[] {
    return [...this.#workers.values()].flatMap((worker) => worker.runningPids);
  }

  /** The log file of a container of a pod on this node (for the kubelet server's /containerLogs). */
  logSource(namespace: string, podName: string, containerName: string): ContainerLogSource | undefined {
    const pod = this.#pods.get(podName, namespace);
    const uid = pod?.metadata?.uid;
    const containers = [...(pod?.spec?.initContainers ?? []), ...(pod?.spec?.containers ?? [])];
    if (uid === undefined || !containers.some((c) => c.name === containerName)) return undefined;
    return {
      path: join(this.#context.stateDir, 'pods', uid, `${containerName}.log`),
      isRunning: () => this.#workers.get(uid)?.isContainerRunning(containerName) ?? false,
    };
  }

  #lookup(namespace: string): DataLookup {
    return async (kind, name) => {
      try {
        if (kind === 'ConfigMap') {
          const map = await this.#core.readNamespacedConfigMap({ namespace, name });
          return { ...(map.data ?? {}) };
        }
        const secret = await this.#core.readNamespacedSecret({ namespace, name });
        return Object.fromEntries(
          Object.entries(secret.data ?? {}).map(([key, value]) => [
            key,
            Buffer.from(value, 'base64').toString('utf8'),
          ]),
        );
      } catch (err) {
        if (httpStatus(err) === 404) return undefined;
        throw err;
      }
    };
  }

  #handle(pod: V1Pod): void {
    if (this.#stopped) return;
    const uid = pod.metadata?.uid ?? '';
    const worker = this.#workers.get(uid);
    if (pod.metadata?.deletionTimestamp !== undefined) {
      void this.#delete(pod, worker);
      return;
    }
    if (worker !== undefined) {
      worker.update(pod);
      return;
    }
    const phase = pod.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed') return;
    if (phase === 'Running' && pod.spec?.restartPolicy === 'Never') {
      // Started by an earlier local node whose processes are gone: running it twice would be wrong.
      void this.#failOrphan(pod);
      return;
    }
    const created = new PodWorker(this.#context, pod);
    this.#workers.set(uid, created);
    created.start();
  }

  async #failOrphan(pod: V1Pod): Promise<void> {
    const { name = '', namespace = '' } = pod.metadata ?? {};
    try {
      await this.#core.patchNamespacedPodStatus(
        {
          name,
          namespace,
          body: [
            { op: 'add', path: '/status/phase', value: 'Failed' },
            { op: 'add', path: '/status/reason', value: 'LocalNodeRestarted' },
            { op: 'add', path: '/status/message', value: 'the local node restarted while this pod ran' },
          ],
        },
        JSON_PATCH,
      );
    } catch (err) {
      this.#log.warn('Pod status update failed', { pod: `${namespace}/${name}`, err: String(err) });
    }
  }

  /** Graceful deletion: stop the processes within the grace period, then remove the pod object. */
  async #delete(pod: V1Pod, worker: PodWorker | undefined): Promise<void> {
    const uid = pod.metadata?.uid ?? '';
    if (this.#deleting.has(uid)) return;
    this.#deleting.add(uid);
    const { name = '', namespace = '' } = pod.metadata ?? {};
    try {
      const gracePeriodMs =
        (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
      if (worker !== undefined) await worker.terminate(gracePeriodMs);
      // gracePeriodSeconds must be in the body: when there is a body, the apiserver ignores the query's.
      await this.#core.deleteNamespacedPod({
        name,
        namespace,
        gracePeriodSeconds: 0,
        body: { gracePeriodSeconds: 0, preconditions: { uid } },
      });
      this.#log.info('Deleted Pod', { pod: `${namespace}/${name}` });
    } catch (err) {
      if (httpStatus(err) !== 404 && httpStatus(err) !== 409) {
        this.#log.warn('Pod deletion failed', { pod: `${namespace}/${name}`, err: String(err) });
      }
      this.#deleting.delete(uid);
    }
  }

  #forget(pod: V1Pod): void {
    const uid = pod.metadata?.uid ?? '';
    const worker = this.#workers.get(uid);
    this.#workers.delete(uid);
    this.#deleting.delete(uid);
    // Force-deleted while running (grace 0 by someone else): the processes must still go.
    if (worker !== undefined && !worker.isFinished) void worker.terminate(0);
  }
}
