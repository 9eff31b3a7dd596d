// Kubernetes Events (core/v1) for state changes, so `kubectl describe vd` tells the story. Reasons
// come from conditions.ts. Failures to record an Event are logged, never fatal to a reconcile.

import type { CoreV1Event } from '@kubernetes/client-node';
import type { KubeClients } from './kube.ts';
import type { Logger } from './logger.ts';
import type { ControllerMetrics } from './metrics.ts';

export interface EventTarget {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string };
}

export class EventRecorder {
  private readonly clients: KubeClients;
  private readonly log: Logger;
  private readonly metrics: ControllerMetrics;
  private readonly component: string;
  private sequence = 0;
  private readonly pending = new Set<Promise<void>>();

  constructor(clients: KubeClients, log: Logger, metrics: ControllerMetrics, component = 'vdisk-controller') {
    this.clients = clients;
    this.log = log;
    this.metrics = metrics;
    this.component = component;
  }

  /**
   * Records an Event without holding up the reconcile that reports it (Events are best effort);
   * flush() waits for those still in flight.
   */
  emit(target: EventTarget, type: 'Normal' | 'Warning', reason: string, message: string): void {
    const promise = this.record(target, type, reason, message).finally(() => this.pending.delete(promise));
    this.pending.add(promise);
  }

  /** Resolves once every emitted Event has been sent (or has failed). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  /** Records one Event on `target`; `message` is a sentence (max 1 KiB kept). */
  async record(
    target: EventTarget,
    type: 'Normal' | 'Warning',
    reason: string,
    message: string,
  ): Promise<void> {
    const namespace = target.metadata.namespace ?? 'default';
    const now = new Date();
    this.sequence = (this.sequence + 1) % 1_000_000;
    const event: CoreV1Event = {
      metadata: {
        name: `${target.metadata.name}.${now.getTime().toString(16)}${this.sequence.toString(16)}`,
        namespace,
      },
      involvedObject: {
        apiVersion: target.apiVersion,
        kind: target.kind,
        name: target.metadata.name,
        namespace,
        ...(target.metadata.uid ? { uid: target.metadata.uid } : {}),
      },
      type,
      reason,
      message: message.slice(0, 1024),
      source: { component: this.component },
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    };
    try {
      this.metrics.apiRequestsTotal.inc({ verb: 'create', resource: 'events' });
      await this.clients.core.createNamespacedEvent({ namespace, body: event });
    } catch (err) {
      this.log.warn({ err, reason }, 'Could not record Event');
    }
  }
}
