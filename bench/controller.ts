// Controller benchmark: N blank VirtualDisks (the config/samples spec) on the local control plane
// (test/controlplane: real apiserver, controller-manager, scheduler; the local node runs the imager
// pods as processes). Per N it reports the wall time from the first create to all Ready, per-disk
// apply->Ready p50/p95, the controller's API requests (informer list/watch vs reads vs writes) and
// reconciles per disk, the requests and reconciles in a quiet window after all Ready (non-zero =
// polling), and the controller's RSS/heap. The goal it reports against: informer-driven reconciles,
// O(1) API calls per change, no polling.
//
// The controller runs as a child process, as in a pod: `node --import bench/controller.ts
// bin/vdisk-agent.mjs controller --kubeconfig=...`. With VDISK_BENCH_COUNT_REQUESTS=1 this module,
// preloaded, wraps KubeConfig.prototype.applySecurityAuthentication, which @kubernetes/client-node v2
// calls once per HTTP request (generated API clients and Watch alike) with the method and URL, and
// answers IPC requests for the counts and process.memoryUsage(). RSS is read from /proc/<pid>/status.
// Reconciles come from the controller's own /metrics (vdisk_reconcile_total).
//
// Run alone: `node bench/controller.ts [--counts=1,100,1000] [--timeout-s=900] [--settle-s=10]`.
// A fresh control plane per N; everything is stopped by PID at the end.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';

const REPO = join(import.meta.dirname, '..');

/** Requests by `verb resource`, e.g. `watch virtualdisks`, `patch virtualdisks/status`. */
export type RequestCounts = Record<string, number>;

interface ChildReport {
  counts: RequestCounts;
  memory: NodeJS.MemoryUsage;
}

// ---------------------------------------------------------------- child side (request counter)

/** `verb resource` of one API request, from its method and URL. */
export function classifyRequest(method: string, url: string): string {
  const parsed = new URL(url, 'https://localhost');
  const segments = parsed.pathname.split('/').filter(Boolean);
  let rest = segments[0] === 'api' ? segments.slice(2) : segments.slice(3);
  if (rest[0] === 'namespaces' && rest.length >= 3) rest = rest.slice(2);
  const [resource = '?', name, sub] = rest;
  const label = sub ? `${resource}/${sub}` : resource;
  const upper = method.toUpperCase();
  let verb = upper.toLowerCase();
  if (upper === 'GET') {
    verb = parsed.searchParams.get('watch') === 'true' ? 'watch' : name ? 'get' : 'list';
  } else if (upper === 'POST') verb = 'create';
  else if (upper === 'PUT') verb = 'update';
  else if (upper === 'DELETE') verb = name ? 'delete' : 'deletecollection';
  return `${verb} ${label}`;
}

function installRequestCounter(): void {
  const counts: RequestCounts = {};
  const prototype = KubeConfig.prototype as unknown as {
    applySecurityAuthentication: (context: { getUrl(): string; getHttpMethod(): string }) => Promise<void>;
  };
  const original = prototype.applySecurityAuthentication;
  prototype.applySecurityAuthentication = async function (this: unknown, context) {
    const key = classifyRequest(String(context.getHttpMethod()), context.getUrl());
    counts[key] = (counts[key] ?? 0) + 1;
    return original.call(this, context);
  };
  process.on('message', (message) => {
    if (message === 'report-gc') (globalThis as { gc?: () => void }).gc?.();
    if (message === 'report' || message === 'report-gc')
      process.send?.({ counts: { ...counts }, memory: process.memoryUsage() });
  });
  // The IPC channel must not keep the controller alive after SIGTERM.
  process.channel?.unref();
}

if (process.env.VDISK_BENCH_COUNT_REQUESTS === '1') installRequestCounter();

// ---------------------------------------------------------------- bench side

export interface ControllerBenchRow {
  disks: number;
  /** Disks that reached Ready before the timeout. */
  ready: number;
  failed: number;
  timedOut: boolean;
  /** First create sent -> last disk Ready (or the timeout), seconds. */
  wallSeconds: number;
  /** Disks Ready per second over the wall time. */
  readyPerSecond: number;
  p50Seconds: number;
  p95Seconds: number;
  /** Controller requests from the first create to all Ready plus the settle tail, by `verb resource`. */
  requests: RequestCounts;
  informerRequests: number;
  readRequests: number;
  writeRequests: number;
  /** Requests at start-up (initial lists and watches), before the first create. */
  startupRequests: number;
  /** Length of the settle tail (after all Ready, counted in `requests`) and of the idle window after it. */
  settleSeconds: number;
  /** Requests in the tail (Job clean-up after Ready). */
  tailRequests: number;
  /** Requests and reconciles in the idle window: non-zero means polling. */
  idleRequests: number;
  idleRequestsByKind: RequestCounts;
  idleReconciles: number;
  /** VirtualDisk reconciles (all results) from the first create to the end of the tail. */
  reconciles: number;
  /** The same, up to all Ready only. */
  reconcilesToReady: number;
  reconcileResults: Record<string, number>;
  meanReconcileMs: number;
  /** The controller's own write counter (vdisk_api_requests_total), a cross-check of `writeRequests`. */
  controllerWriteMetric: number;
  rssStartMib: number;
  rssEndMib: number;
  rssPeakMib: number;
  heapUsedEndMib: number;
  /** After the idle window and a full GC: what the controller retains for N disks. */
  rssAfterGcMib: number;
  heapUsedAfterGcMib: number;
}

export interface ControllerBenchOptions {
  counts?: number[];
  /** Per N, from the first create; default 900 s. */
  timeoutSeconds?: number;
  /** Quiet window after all Ready; default 10 s. */
  settleSeconds?: number;
  /** Parallel create requests; default 16. */
  createConcurrency?: number;
  log?: (line: string) => void;
}

const sum = (values: Iterable<number>): number => [...values].reduce((total, value) => total + value, 0);
const mib = (bytes: number): number => Math.round((bytes / 1048576) * 10) / 10;

function isInformer(key: string): boolean {
  return key.startsWith('list ') || key.startsWith('watch ');
}
function isRead(key: string): boolean {
  return key.startsWith('get ');
}

function diff(after: RequestCounts, before: RequestCounts): RequestCounts {
  const out: RequestCounts = {};
  for (const [key, value] of Object.entries(after)) {
    const delta = value - (before[key] ?? 0);
    if (delta > 0) out[key] = delta;
  }
  return out;
}

function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)] ?? Number.NaN;
}

function procStatusKib(pid: number | undefined, field: string): number {
  if (pid === undefined) return 0;
  try {
    const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/** Counts and memory of the child; `gc` first runs a full GC (the child has --expose-gc). */
function askChild(child: ChildProcess, gc = false): Promise<ChildReport> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('controller did not answer the report request')), 30_000);
    child.once('message', (message) => {
      clearTimeout(timer);
      resolve(message as ChildReport);
    });
    child.send(gc ? 'report-gc' : 'report');
  });
}

/** Prometheus text -> sum of the samples of `name` whose labels include every `match` pair, by `by`. */
function metricSamples(text: string, name: string, match: Record<string, string>, by?: string) {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labels: Record<string, string> = {};
    for (const m of line.matchAll(/(\w+)="([^"]*)"/g)) labels[m[1]!] = m[2]!;
    if (!Object.entries(match).every(([k, v]) => labels[k] === v)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    const key = by ? (labels[by] ?? '') : '';
    out[key] = (out[key] ?? 0) + value;
  }
  return out;
}

async function scrape(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  return response.text();
}

interface Scraped {
  reconciles: Record<string, number>;
  durationSum: number;
  durationCount: number;
  writes: number;
}

async function scrapeController(port: number): Promise<Scraped> {
  const text = await scrape(port);
  const kind = { kind: 'VirtualDisk' };
  return {
    reconciles: metricSamples(text, 'vdisk_reconcile_total', kind, 'result'),
    durationSum: sum(Object.values(metricSamples(text, 'vdisk_reconcile_duration_seconds_sum', kind))),
    durationCount: sum(Object.values(metricSamples(text, 'vdisk_reconcile_duration_seconds_count', kind))),
    writes: sum(Object.values(metricSamples(text, 'vdisk_api_requests_total', {}))),
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A sleep that does not keep the process alive (for timeouts raced against the real work). */
const sleepUnref = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref());

async function benchOne(
  disks: number,
  options: Required<Omit<ControllerBenchOptions, 'counts'>>,
  assetsDir: string,
): Promise<ControllerBenchRow> {
  const { log } = options;
  const { CustomObjectsApi, CoreV1Api, Watch } = await import('@kubernetes/client-node');
  const { API_GROUP, API_VERSION } = await import('../src/api/common.ts');
  const { binaryPath } = await import('../test/controlplane/assets.ts');
  const { startControlPlane } = await import('../test/controlplane/harness.ts');
  const { startLocalNode } = await import('../test/controlplane/local-node.ts');

  const work = await mkdtemp(join(tmpdir(), 'vdisk-bench-controller-'));
  log(`controller bench N=${disks}: starting the control plane and local node`);
  const plane = await startControlPlane({ assetsDir });
  let node: Awaited<ReturnType<typeof startLocalNode>> | undefined;
  let child: ChildProcess | undefined;
  let stopWatch: (() => void) | undefined;
  try {
    node = await startLocalNode(plane.kubeConfig, {
      stateDir: join(work, 'node'),
      volumesDir: join(work, 'volumes'),
      quiet: true,
    });
    const kubectl = binaryPath(assetsDir, 'kubectl');
    const run = (...args: string[]) =>
      execFileSync(kubectl, ['--kubeconfig', plane.kubeconfigPath, ...args], {
        encoding: 'utf8',
        cwd: REPO,
        stdio: 'pipe',
      });
    run('apply', '--server-side', '--force-conflicts', '-f', 'crds/');
    // kubectl wait fails at once ("status.conditions accessor error") on a CRD whose status is still
    // empty a moment after apply: try again until the conditions exist.
    for (let attempt = 1; ; attempt++) {
      try {
        run(
          'wait',
          '--for=condition=Established',
          '--timeout=60s',
          'crd/virtualdisks.vdisk.dev',
          'crd/disksnapshots.vdisk.dev',
        );
        break;
      } catch (err) {
        if (attempt >= 20) throw err;
        await sleep(250);
      }
    }
    const core = plane.kubeConfig.makeApiClient(CoreV1Api);
    for (let attempt = 0; ; attempt++) {
      try {
        await core.readNamespacedServiceAccount({ name: 'default', namespace: 'default' });
        break;
      } catch (err) {
        if (attempt > 240) throw err;
        await sleep(250);
      }
    }

    // The controller, as a child process with the request counter preloaded.
    const spawned = spawn(
      process.execPath,
      [
        '--expose-gc',
        '--import',
        import.meta.filename,
        join(REPO, 'bin', 'vdisk-agent.mjs'),
        'controller',
        `--kubeconfig=${plane.kubeconfigPath}`,
        '--metrics-port=0',
      ],
      {
        cwd: REPO,
        env: { ...process.env, VDISK_BENCH_COUNT_REQUESTS: '1', VDISK_LOG_LEVEL: 'info' },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      },
    );
    child = spawned;
    let logLines = 0;
    let stderr = '';
    spawned.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    const metricsPort = await new Promise<number>((resolve, reject) => {
      let buffer = '';
      const timer = setTimeout(() => reject(new Error(`controller did not start: ${stderr}`)), 60_000);
      spawned.once('exit', (code) => reject(new Error(`controller exited ${code}: ${stderr}`)));
      spawned.stdout?.on('data', (chunk: Buffer) => {
        buffer += chunk.toString();
        let newline = buffer.indexOf('\n');
        while (newline >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          logLines++;
          if (line.includes('Serving probes and metrics')) {
            const port = (JSON.parse(line) as { port?: number }).port;
            if (port) {
              clearTimeout(timer);
              resolve(port);
            }
          }
          newline = buffer.indexOf('\n');
        }
      });
    });
    // Synced: /readyz answers 200 once the informer caches hold their first lists.
    for (let attempt = 0; ; attempt++) {
      const ok = await fetch(`http://127.0.0.1:${metricsPort}/readyz`)
        .then((r) => r.ok)
        .catch(() => false);
      if (ok) break;
      if (attempt > 600) throw new Error('controller never became ready');
      await sleep(100);
    }
    await sleep(1000);
    const startReport = await askChild(spawned);
    const startScrape = await scrapeController(metricsPort);
    const rssStartMib = mib(procStatusKib(spawned.pid, 'VmRSS') * 1024);

    // The bench's own watch (its own KubeConfig, not counted) records when each disk turns Ready.
    const sentAt = new Map<string, number>();
    const readyAt = new Map<string, number>();
    const failed = new Set<string>();
    let wake: () => void = () => undefined;
    const onDisk = (object: { metadata?: { name?: string }; status?: { phase?: string } }) => {
      const name = object.metadata?.name;
      if (!name) return;
      if (object.status?.phase === 'Ready' && !readyAt.has(name)) readyAt.set(name, performance.now());
      if (object.status?.phase === 'Failed') failed.add(name);
      if (readyAt.size + failed.size >= disks) wake();
    };
    const custom = plane.kubeConfig.makeApiClient(CustomObjectsApi);
    const target = { group: API_GROUP, version: API_VERSION, namespace: 'default', plural: 'virtualdisks' };
    let watching = true;
    const startWatch = async (): Promise<void> => {
      const list = (await custom.listNamespacedCustomObject(target)) as {
        metadata?: { resourceVersion?: string };
        items: Parameters<typeof onDisk>[0][];
      };
      list.items.forEach(onDisk);
      const request = await new Watch(plane.kubeConfig).watch(
        `/apis/${API_GROUP}/${API_VERSION}/namespaces/default/virtualdisks`,
        { resourceVersion: list.metadata?.resourceVersion },
        (_type: string, object: Parameters<typeof onDisk>[0]) => onDisk(object),
        () => {
          if (watching) setTimeout(() => void startWatch().catch(() => undefined), 200);
        },
      );
      stopWatch = () => {
        watching = false;
        request.abort();
      };
    };
    await startWatch();

    const allDone = new Promise<void>((resolve) => {
      wake = resolve;
    });
    log(`controller bench N=${disks}: creating ${disks} blank VirtualDisks`);
    const start = performance.now();
    let next = 0;
    const creator = async () => {
      for (;;) {
        const index = next++;
        if (index >= disks) return;
        const name = `bench-${String(index).padStart(4, '0')}`;
        sentAt.set(name, performance.now());
        await custom.createNamespacedCustomObject({
          ...target,
          body: {
            apiVersion: `${API_GROUP}/${API_VERSION}`,
            kind: 'VirtualDisk',
            metadata: { name },
            spec: {
              size: '1Gi',
              format: 'qcow2',
              formatOptions: { cluster_size: '65536' },
              source: { blank: {} },
            },
          },
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(options.createConcurrency, disks) }, creator));
    let peakRssKib = 0;
    const progress = setInterval(() => {
      peakRssKib = Math.max(peakRssKib, procStatusKib(spawned.pid, 'VmRSS'));
      log(
        `controller bench N=${disks}: ${readyAt.size} Ready, ${failed.size} Failed after ${((performance.now() - start) / 1000).toFixed(0)} s; controller RSS ${mib(procStatusKib(spawned.pid, 'VmRSS') * 1024)} MiB; ${node?.runningPids().length ?? 0} imager processes`,
      );
    }, 15_000);
    const timedOut = await Promise.race([
      allDone.then(() => false),
      sleepUnref(options.timeoutSeconds * 1000).then(() => true),
    ]);
    clearInterval(progress);
    const end = timedOut ? performance.now() : Math.max(...readyAt.values(), start);
    const endReport = await askChild(spawned);
    const endScrape = await scrapeController(metricsPort);
    const rssEndMib = mib(procStatusKib(spawned.pid, 'VmRSS') * 1024);

    // Tail: after Ready the controller still cleans up (deletes the finished Job, a last status patch
    // and Event); those belong to the disks' lifecycle. Then an idle window of the same length: nothing
    // changes any more, so an informer-driven controller without polling sends nothing.
    await sleep(options.settleSeconds * 1000);
    const settleReport = await askChild(spawned);
    const settleScrape = await scrapeController(metricsPort);
    await sleep(options.settleSeconds * 1000);
    const idleReport = await askChild(spawned, true);
    const rssAfterGcMib = mib(procStatusKib(spawned.pid, 'VmRSS') * 1024);
    const idleScrape = await scrapeController(metricsPort);
    const rssPeakMib = mib(Math.max(peakRssKib, procStatusKib(spawned.pid, 'VmHWM')) * 1024);

    const requests = diff(settleReport.counts, startReport.counts);
    const entries = Object.entries(requests);
    const latencies = [...readyAt.entries()]
      .map(([name, at]) => (at - (sentAt.get(name) ?? start)) / 1000)
      .sort((a, b) => a - b);
    const reconcileResults = diff(settleScrape.reconciles, startScrape.reconciles);
    const reconcileCount = sum(Object.values(reconcileResults));
    const wallSeconds = (end - start) / 1000;
    log(`controller bench N=${disks}: ${logLines} controller log lines`);
    return {
      disks,
      ready: readyAt.size,
      failed: failed.size,
      timedOut,
      wallSeconds,
      readyPerSecond: readyAt.size / wallSeconds,
      p50Seconds: percentile(latencies, 0.5),
      p95Seconds: percentile(latencies, 0.95),
      requests,
      informerRequests: sum(entries.filter(([k]) => isInformer(k)).map(([, v]) => v)),
      readRequests: sum(entries.filter(([k]) => isRead(k)).map(([, v]) => v)),
      writeRequests: sum(entries.filter(([k]) => !isInformer(k) && !isRead(k)).map(([, v]) => v)),
      startupRequests: sum(Object.values(startReport.counts)),
      settleSeconds: options.settleSeconds,
      tailRequests: sum(Object.values(diff(settleReport.counts, endReport.counts))),
      idleRequests: sum(Object.values(diff(idleReport.counts, settleReport.counts))),
      idleRequestsByKind: diff(idleReport.counts, settleReport.counts),
      idleReconciles: sum(Object.values(idleScrape.reconciles)) - sum(Object.values(settleScrape.reconciles)),
      reconciles: reconcileCount,
      reconcilesToReady: sum(Object.values(diff(endScrape.reconciles, startScrape.reconciles))),
      reconcileResults,
      meanReconcileMs:
        ((settleScrape.durationSum - startScrape.durationSum) /
          Math.max(1, settleScrape.durationCount - startScrape.durationCount)) *
        1000,
      controllerWriteMetric: settleScrape.writes - startScrape.writes,
      rssStartMib,
      rssEndMib,
      rssPeakMib,
      heapUsedEndMib: mib(endReport.memory.heapUsed),
      rssAfterGcMib,
      heapUsedAfterGcMib: mib(idleReport.memory.heapUsed),
    };
  } finally {
    stopWatch?.();
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child?.once('exit', resolve));
      child.kill('SIGTERM');
      if ((await Promise.race([exited.then(() => true), sleepUnref(15_000).then(() => false)])) === false) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    await node?.stop();
    await plane.stop();
    await rm(work, { recursive: true, force: true });
  }
}

/** Runs the benchmark for each count (a fresh control plane each); undefined if no control plane here. */
export async function runControllerBench(
  options: ControllerBenchOptions = {},
): Promise<ControllerBenchRow[] | { skipped: string }> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const { ensureAssets } = await import('../test/controlplane/assets.ts');
  const assets = await ensureAssets({ quiet: true });
  if (!assets.ok) return { skipped: assets.skipReason };
  const rows: ControllerBenchRow[] = [];
  for (const disks of options.counts ?? [1, 100, 1000]) {
    rows.push(
      await benchOne(
        disks,
        {
          timeoutSeconds: options.timeoutSeconds ?? 900,
          settleSeconds: options.settleSeconds ?? 10,
          createConcurrency: options.createConcurrency ?? 16,
          log,
        },
        assets.dir,
      ),
    );
  }
  return rows;
}

/** The rows as Markdown tables (timing and memory; requests by verb and resource). */
export function formatControllerBench(result: ControllerBenchRow[] | { skipped: string }): string {
  if (!Array.isArray(result)) return `controller bench skipped: ${result.skipped}\n`;
  const f = (value: number, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : '-');
  const lines = [
    'Controller: N blank VirtualDisks on the local control plane (controller as a child process)',
    '',
    '| N | Ready | wall s | Ready/s | p50 s | p95 s | req/disk | informer | reads/disk | writes/disk | reconciles/disk | req/reconcile | ms/reconcile | idle req / reconciles | RSS start/Ready/peak/after GC MiB | heap Ready/after GC MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const row of result) {
    const n = Math.max(1, row.ready);
    const total = row.informerRequests + row.readRequests + row.writeRequests;
    lines.push(
      `| ${row.disks} | ${row.ready}${row.failed ? ` (${row.failed} Failed)` : ''}${row.timedOut ? ' (timeout)' : ''} | ${f(row.wallSeconds)} | ${f(row.readyPerSecond, 2)} | ${f(row.p50Seconds)} | ${f(row.p95Seconds)} | ${f(total / n, 2)} | ${row.informerRequests} | ${f(row.readRequests / n, 2)} | ${f(row.writeRequests / n, 2)} | ${f(row.reconciles / n, 2)} | ${f(total / Math.max(1, row.reconciles), 2)} | ${f(row.meanReconcileMs, 2)} | ${row.idleRequests} / ${row.idleReconciles} in ${row.settleSeconds} s | ${row.rssStartMib}/${row.rssEndMib}/${row.rssPeakMib}/${row.rssAfterGcMib} | ${row.heapUsedEndMib}/${row.heapUsedAfterGcMib} |`,
    );
  }
  const keys = [...new Set(result.flatMap((row) => Object.keys(row.requests)))].sort();
  lines.push(
    '',
    `| requests (first create -> all Ready + ${result[0]?.settleSeconds ?? 0} s tail) | ${result.map((r) => `N=${r.disks}`).join(' | ')} |`,
  );
  lines.push(`|---|${result.map(() => '---|').join('')}`);
  for (const key of keys) lines.push(`| ${key} | ${result.map((r) => r.requests[key] ?? 0).join(' | ')} |`);
  lines.push(
    `| (controller's vdisk_api_requests_total) | ${result.map((r) => r.controllerWriteMetric).join(' | ')} |`,
  );
  lines.push(`| (reconciles up to all Ready) | ${result.map((r) => r.reconcilesToReady).join(' | ')} |`);
  lines.push(
    `| (reconcile results) | ${result.map((r) => JSON.stringify(r.reconcileResults).replace(/[{}"]/g, '')).join(' | ')} |`,
  );
  return `${lines.join('\n')}\n`;
}

/**
 * For bench/run.ts: the tables (with a leading blank line) for `--controller-counts=` (default 1,100,1000,
 * ~7 min on 2 cores), or '' with `--skip-controller`.
 */
export async function controllerBenchReport(argv: string[], log?: (line: string) => void): Promise<string> {
  if (argv.includes('--skip-controller')) return '';
  const counts = argv.find((arg) => arg.startsWith('--controller-counts='))?.split('=')[1];
  const result = await runControllerBench({
    counts: counts ? counts.split(',').map(Number) : undefined,
    log,
  });
  return `\n${formatControllerBench(result)}`;
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const argument = (name: string) =>
    process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
  const counts = argument('counts');
  const timeout = argument('timeout-s');
  const settle = argument('settle-s');
  const result = await runControllerBench({
    counts: counts ? counts.split(',').map(Number) : undefined,
    timeoutSeconds: timeout ? Number(timeout) : undefined,
    settleSeconds: settle ? Number(settle) : undefined,
  });
  process.stdout.write(formatControllerBench(result));
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  if (process.argv.includes('--debug-handles')) {
    await sleep(3000);
    process.stderr.write(`${JSON.stringify(process.getActiveResourcesInfo())}\n`);
  }
}
