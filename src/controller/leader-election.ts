// Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does: acquire a
// free or expired Lease, renew it every retry period, and give up leadership if renewals fail for
// longer than the renew deadline. Optimistic concurrency (resourceVersion) settles races.

import type { V1Lease } from '@kubernetes/client-node';
import { httpStatusOf, type KubeClients } from './kube.ts';
import type { Logger } from './logger.ts';

export interface LeaderElectionOptions {
  namespace: string;
  leaseName: string;
  identity: string;
  leaseDurationSeconds: number;
  renewDeadlineSeconds: number;
  retryPeriodSeconds: number;
}

export const DEFAULT_LEADER_ELECTION = {
  leaseName: 'vdisk-controller',
  leaseDurationSeconds: 15,
  renewDeadlineSeconds: 10,
  retryPeriodSeconds: 2,
};

/** metav1.MicroTime: RFC 3339 with exactly six fractional digits (Go parses it strictly). */
export function microTime(date: Date): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

function timeMs(value: unknown): number {
  if (value instanceof Date) return value.getTime();
  if (typeof value === 'string') return Date.parse(value);
  return 0;
}

export class LeaderElector {
  private readonly clients: KubeClients;
  private readonly options: LeaderElectionOptions;
  private readonly log: Logger;
  private leading = false;
  private lastRenewMs = 0;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(clients: KubeClients, options: LeaderElectionOptions, log: Logger) {
    this.clients = clients;
    this.options = options;
    this.log = log.child({ lease: `${options.namespace}/${options.leaseName}`, identity: options.identity });
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaigns until elected, calls `onStarted`, then keeps renewing; calls `onStopped` once if the
   * Lease is lost. Resolves when stop() is called.
   */
  run(onStarted: () => void, onStopped: () => void): Promise<void> {
    return new Promise((resolve) => {
      const tick = async () => {
        if (this.stopped) {
          resolve();
          return;
        }
        const acquired = await this.tryAcquireOrRenew().catch((err: unknown) => {
          this.log.warn({ err }, 'Lease update failed');
          return false;
        });
        const nowMs = Date.now();
        if (acquired) {
          this.lastRenewMs = nowMs;
          if (!this.leading) {
            this.leading = true;
            this.log.info('Acquired leader Lease');
            onStarted();
          }
        } else if (this.leading && nowMs - this.lastRenewMs > this.options.renewDeadlineSeconds * 1000) {
          this.leading = false;
          this.log.error('Lost leader Lease');
          onStopped();
        }
        this.timer = setTimeout(tick, this.options.retryPeriodSeconds * 1000);
      };
      void tick();
      this.resolveStop = resolve;
    });
  }

  private resolveStop: (() => void) | undefined;

  /** Stops campaigning and releases the Lease if held (so a successor need not wait for expiry). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.leading) {
      this.leading = false;
      await this.release().catch((err: unknown) => this.log.warn({ err }, 'Could not release leader Lease'));
    }
    this.resolveStop?.();
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, leaseName, identity, leaseDurationSeconds } = this.options;
    const now = new Date();
    let lease: V1Lease;
    try {
      lease = await this.clients.coordination.readNamespacedLease({ name: leaseName, namespace });
    } catch (err) {
      if (httpStatusOf(err) !== 404) throw err;
      const body = {
        metadata: { name: leaseName, namespace },
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds,
          acquireTime: microTime(now),
          renewTime: microTime(now),
          leaseTransitions: 0,
        },
      } as unknown as V1Lease;
      try {
        await this.clients.coordination.createNamespacedLease({ namespace, body });
        return true;
      } catch (createErr) {
        if (httpStatusOf(createErr) === 409) return false;
        throw createErr;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const renewedMs = timeMs(spec.renewTime);
    const durationMs = (spec.leaseDurationSeconds ?? leaseDurationSeconds) * 1000;
    const isMine = holder === identity;
    if (!isMine && holder !== '' && renewedMs + durationMs > now.getTime()) return false;
    const body = {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds,
        renewTime: microTime(now),
        ...(isMine
          ? {}
          : { acquireTime: microTime(now), leaseTransitions: (spec.leaseTransitions ?? 0) + 1 }),
      },
    } as unknown as V1Lease;
    try {
      await this.clients.coordination.replaceNamespacedLease({ name: leaseName, namespace, body });
      return true;
    } catch (err) {
      if (httpStatusOf(err) === 409) return false;
      throw err;
    }
  }

  private async release(): Promise<void> {
    const { namespace, leaseName, identity } = this.options;
    const lease = await this.clients.coordination.readNamespacedLease({ name: leaseName, namespace });
    if (lease.spec?.holderIdentity !== identity) return;
    const body = {
      ...lease,
      spec: { ...lease.spec, holderIdentity: '', renewTime: microTime(new Date(0)) },
    } as unknown as V1Lease;
    await this.clients.coordination.replaceNamespacedLease({ name: leaseName, namespace, body });
  }
}
