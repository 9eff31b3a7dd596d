// Runs the controller: informer caches -> work queue -> reconcile workers, optionally behind Lease
// leader election, with the probe/metrics server. Events on children and sources are mapped back to
// the VirtualDisks and DiskSnapshots they concern. stop() shuts everything down in order.

import type { KubeConfig, KubernetesObject, V1Pod } from '@kubernetes/client-node';
import { type ReconcileContext, WriteOverlay } from './context.ts';
import { reconcileDiskSnapshot } from './disksnapshot/reconciler.ts';
import { EventRecorder } from './events.ts';
import { startHttpServer } from './http-server.ts';
import { DEFAULT_POD_SETTINGS, type PodSettings } from './imager-job.ts';
import { type Caches, startCaches } from './informers.ts';
import { httpStatusOf, makeClients } from './kube.ts';
import { DEFAULT_LEADER_ELECTION, LeaderElector, type LeaderElectionOptions } from './leader-election.ts';
import type { Logger } from './logger.ts';
import { type ControllerMetrics, createMetrics } from './metrics.ts';
import { LABEL_DISK, LABEL_SNAPSHOT, labelValue } from './naming.ts';
import { PodReports } from './pod-reports.ts';
import { reconcileVirtualDisk } from './virtualdisk/reconciler.ts';
import { WorkQueue } from './work-queue.ts';

export interface ManagerOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  /** Watch one namespace only; all when undefined. */
  namespace?: string;
  settings?: Partial<PodSettings>;
  /** Concurrent reconciles (distinct keys only). */
  workers?: number;
  /** Every object is re-queued this often even without events. */
  resyncPeriodMs?: number;
  /** Lease settings; undefined runs without election (tests, a single replica). */
  leaderElection?: Partial<LeaderElectionOptions> & { namespace: string; identity: string };
  /** Probe/metrics port; undefined = no server, 0 = any free port. */
  httpPort?: number;
  httpHost?: string;
  metrics?: ControllerMetrics;
  /** Called once if leadership is lost (main exits the process). */
  onLostLeadership?: () => void;
}

type Kind = 'VirtualDisk' | 'DiskSnapshot';

interface LooseObject {
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string> };
  spec?: {
    virtualDiskName?: string;
    source?: { virtualDisk?: { name?: string }; snapshot?: { name?: string } };
  };
}

function keyOf(kind: Kind, namespace: string, name: string): string {
  return `${kind}/${namespace}/${name}`;
}

export class Manager {
  readonly metrics: ControllerMetrics;
  private readonly options: ManagerOptions;
  private readonly queue = new WorkQueue();
  private readonly log: Logger;
  private caches: Caches | undefined;
  private stopCaches: (() => Promise<void>) | undefined;
  private elector: LeaderElector | undefined;
  private server: import('node:http').Server | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private workers: Promise<void>[] = [];
  private context: ReconcileContext | undefined;
  private reports: PodReports | undefined;
  private synced = false;
  private leading = false;
  private stopping = false;
  /** Bound port of the probe/metrics server (after start). */
  httpPort: number | undefined;

  constructor(options: ManagerOptions) {
    this.options = options;
    this.log = options.log;
    this.metrics = options.metrics ?? createMetrics();
  }

  /** True once caches are synced and (with election) this instance leads. */
  get isReady(): boolean {
    return this.synced && (this.options.leaderElection ? this.leading : true);
  }

  async start(): Promise<void> {
    const { options } = this;
    const clients = makeClients(options.kubeConfig);
    if (options.httpPort !== undefined) {
      const started = await startHttpServer(
        this.metrics.registry,
        { isHealthy: () => !this.stopping, isReady: () => this.synced && !this.stopping },
        options.httpPort,
        options.httpHost,
      );
      this.server = started.server;
      this.httpPort = started.port;
      this.log.info({ port: started.port }, 'Serving probes and metrics');
    }
    this.reports = new PodReports(options.kubeConfig, this.log, (pod) => this.onChange('pods', pod));
    const { caches, stop } = await startCaches(clients, options.namespace, this.log, (kind, object) =>
      this.onChange(kind, object),
    );
    this.caches = caches;
    this.stopCaches = stop;
    this.synced = true;
    this.log.info({ namespace: options.namespace ?? '(all)' }, 'Synced informer caches');
    this.context = {
      clients,
      caches,
      settings: { ...DEFAULT_POD_SETTINGS, ...options.settings },
      log: this.log,
      metrics: this.metrics,
      events: new EventRecorder(clients, this.log, this.metrics),
      overlay: new WriteOverlay(),
      reports: this.reports,
      now: () => new Date(),
    };
    const begin = () => {
      this.leading = true;
      this.metrics.isLeader.set(1);
      this.enqueueAll();
      const count = options.workers ?? 4;
      for (let index = 0; index < count; index++) this.workers.push(this.work());
      const resyncMs = options.resyncPeriodMs ?? 5 * 60_000;
      this.resyncTimer = setInterval(() => this.enqueueAll(), resyncMs);
      this.resyncTimer.unref();
    };
    if (options.leaderElection) {
      this.elector = new LeaderElector(
        clients,
        { ...DEFAULT_LEADER_ELECTION, ...options.leaderElection },
        this.log,
      );
      void this.elector.run(begin, () => {
        this.leading = false;
        this.metrics.isLeader.set(0);
        this.queue.shutDown();
        options.onLostLeadership?.();
      });
    } else {
      begin();
    }
  }

  /** Stops workers (the running reconciles finish), informers, election (releasing the Lease), server. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.queue.shutDown();
    await Promise.all(this.workers);
    this.reports?.stop();
    await this.context?.events.flush();
    await this.elector?.stop();
    await this.stopCaches?.();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.log.info('Stopped controller');
  }

  private enqueueAll(): void {
    if (!this.caches) return;
    for (const object of this.caches.disks.list()) this.enqueueObject('VirtualDisk', object);
    for (const object of this.caches.snapshots.list()) this.enqueueObject('DiskSnapshot', object);
  }

  private enqueueObject(kind: Kind, object: KubernetesObject): void {
    const name = object.metadata?.name;
    if (name) this.enqueue(kind, object.metadata?.namespace ?? 'default', name);
  }

  private enqueue(kind: Kind, namespace: string, name: string): void {
    this.queue.add(keyOf(kind, namespace, name));
    this.metrics.queueDepth.set(this.queue.length);
  }

  /** Maps a changed object to every VirtualDisk / DiskSnapshot whose reconcile reads it. */
  private onChange(kind: keyof Caches, object: KubernetesObject): void {
    const caches = this.caches;
    const loose = object as LooseObject;
    const namespace = loose.metadata?.namespace ?? 'default';
    const name = loose.metadata?.name ?? '';
    if (!caches) return;
    if (kind === 'pods') {
      const pod = object as V1Pod;
      const cached = caches.pods.get(name, namespace);
      this.reports?.observe(pod, cached?.metadata?.uid !== pod.metadata?.uid);
    }
    const disks = () => caches.disks.list(namespace) as LooseObject[];
    const snapshots = () => caches.snapshots.list(namespace) as LooseObject[];
    const diskDependents = (diskName: string) => {
      this.enqueue('VirtualDisk', namespace, diskName);
      const snapshotNames = new Set<string>();
      for (const snapshot of snapshots()) {
        if (snapshot.spec?.virtualDiskName === diskName && snapshot.metadata?.name) {
          snapshotNames.add(snapshot.metadata.name);
          this.enqueue('DiskSnapshot', namespace, snapshot.metadata.name);
        }
      }
      for (const disk of disks()) {
        const source = disk.spec?.source;
        const diskKeyName = disk.metadata?.name;
        if (!diskKeyName) continue;
        if (
          source?.virtualDisk?.name === diskName ||
          (source?.snapshot?.name && snapshotNames.has(source.snapshot.name))
        ) {
          this.enqueue('VirtualDisk', namespace, diskKeyName);
        }
      }
    };
    if (kind === 'disks') {
      diskDependents(name);
      return;
    }
    if (kind === 'snapshots') {
      this.enqueue('DiskSnapshot', namespace, name);
      if (loose.spec?.virtualDiskName) this.enqueue('VirtualDisk', namespace, loose.spec.virtualDiskName);
      for (const disk of disks()) {
        if (disk.spec?.source?.snapshot?.name === name && disk.metadata?.name)
          this.enqueue('VirtualDisk', namespace, disk.metadata.name);
      }
      return;
    }
    // PVCs, Jobs and Pods carry the disk (and snapshot) label; values of long names are hashed.
    const diskLabel = loose.metadata?.labels?.[LABEL_DISK];
    const snapshotLabel = loose.metadata?.labels?.[LABEL_SNAPSHOT];
    if (diskLabel) {
      for (const disk of disks()) {
        if (disk.metadata?.name && labelValue(disk.metadata.name) === diskLabel)
          diskDependents(disk.metadata.name);
      }
    }
    if (snapshotLabel) {
      for (const snapshot of snapshots()) {
        if (snapshot.metadata?.name && labelValue(snapshot.metadata.name) === snapshotLabel)
          this.enqueue('DiskSnapshot', namespace, snapshot.metadata.name);
      }
    }
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      this.metrics.queueDepth.set(this.queue.length);
      const [kind, namespace = '', ...rest] = key.split('/');
      const name = rest.join('/');
      const endTimer = this.metrics.reconcileDurationSeconds.startTimer({ kind });
      try {
        if (kind === 'VirtualDisk') await reconcileVirtualDisk(this.context!, namespace, name);
        else await reconcileDiskSnapshot(this.context!, namespace, name);
        this.queue.forget(key);
        this.metrics.reconcileTotal.inc({ kind, result: 'success' });
      } catch (err) {
        if (httpStatusOf(err) === 409) {
          // A write raced another (or our cache lagged our own write): retry soon, without backoff.
          this.metrics.reconcileTotal.inc({ kind, result: 'conflict' });
          this.queue.addAfter(key, 100);
        } else {
          const delayMs = this.queue.addRateLimited(key);
          this.metrics.reconcileTotal.inc({ kind, result: 'error' });
          this.log.warn(
            { err, key, delayMs, attempt: this.queue.failureCount(key) },
            'Reconcile failed, retrying',
          );
        }
      } finally {
        endTimer();
        this.queue.done(key);
      }
    }
  }
}
