// Prometheus metrics (prom-client), one registry per controller instance so tests and the demo can run
// several: reconcile counts and latency per kind, queue depth, API calls, leadership, imager Jobs.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

export interface ControllerMetrics {
  registry: Registry;
  reconcileTotal: Counter<'kind' | 'result'>;
  reconcileDurationSeconds: Histogram<'kind'>;
  queueDepth: Gauge;
  apiRequestsTotal: Counter<'verb' | 'resource'>;
  jobsCreatedTotal: Counter<'operation'>;
  isLeader: Gauge;
}

/** A fresh registry with every controller metric; `withDefaults` adds process metrics (CPU, heap). */
export function createMetrics(withDefaults = true): ControllerMetrics {
  const registry = new Registry();
  if (withDefaults) collectDefaultMetrics({ register: registry, prefix: 'vdisk_controller_' });
  return {
    registry,
    reconcileTotal: new Counter({
      name: 'vdisk_reconcile_total',
      help: 'Reconciles by kind and result (success, error, requeue)',
      labelNames: ['kind', 'result'],
      registers: [registry],
    }),
    reconcileDurationSeconds: new Histogram({
      name: 'vdisk_reconcile_duration_seconds',
      help: 'Time to reconcile one object',
      labelNames: ['kind'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'vdisk_workqueue_depth',
      help: 'Keys waiting in the work queue',
      registers: [registry],
    }),
    apiRequestsTotal: new Counter({
      name: 'vdisk_api_requests_total',
      help: 'Write requests the controller sent to the API server, by verb and resource',
      labelNames: ['verb', 'resource'],
      registers: [registry],
    }),
    jobsCreatedTotal: new Counter({
      name: 'vdisk_imager_jobs_created_total',
      help: 'Imager Jobs created, by operation',
      labelNames: ['operation'],
      registers: [registry],
    }),
    isLeader: new Gauge({
      name: 'vdisk_leader',
      help: '1 while this instance holds the leader Lease',
      registers: [registry],
    }),
  };
}
