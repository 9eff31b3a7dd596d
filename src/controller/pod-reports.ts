// What worker pods say while they run, before their termination message exists: the imager's progress
// lines and the attach agent's report (device, partitions), read by following the container's log
// through the API server (GET pods/log?follow=true: one stream per pod, pushed like a watch, no
// polling). The controller's reconcilers stay the only writers of status: a new report re-queues the
// disk and the reconcile copies it from here. Pod workers need no API access (DESIGN.md).
//
// Bounded: at most `maxStreams` logs are followed at once (pods beyond it get no live report until a
// slot frees; their final result still arrives in the termination message), lines longer than 64 KiB
// are dropped, and an attach pod's stream is closed as soon as its report arrived.

import { request as httpRequest } from 'node:http';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import { parseProgressLine } from '../agent/imager/progress.ts';
import { ATTACH_ROLE, LABEL_ROLE } from './attach-pod.ts';
import type { Logger } from './logger.ts';
import { LABEL_OPERATION } from './naming.ts';

/** What the attach agent reported once attached (the fields status.attachment shows). */
export interface AttachReportSeen {
  device: string;
  partitions: Array<{ name: string; start: number; size: number; mountPath?: string }>;
}

export interface PodReport {
  /** The imager's newest progress, in percent. */
  progress?: number;
  attach?: AttachReportSeen;
}

/** The read side reconcilers use (by pod uid). */
export interface PodReportReader {
  get(uid: string | undefined): PodReport | undefined;
}

/** Imager operations long enough to report progress. */
const PROGRESS_OPERATIONS = new Set(['import', 'clone', 'restore']);
const MAX_LINE_BYTES = 64 * 1024;
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 30_000;
const MAX_RETRIES = 8;
/** Lines re-read when a stream is reopened, enough to find the newest progress or the report. */
const TAIL_LINES = 20;

interface Follow {
  pod: V1Pod;
  container: string;
  abort: AbortController | undefined;
  retries: number;
  timer: NodeJS.Timeout | undefined;
  /** The stream is not reopened (report complete, pod ended, or retries used up). */
  finished: boolean;
}

function isRunning(pod: V1Pod): boolean {
  return (
    pod.status?.phase === 'Running' &&
    !pod.metadata?.deletionTimestamp &&
    (pod.status.containerStatuses ?? []).some((status) => status.state?.running !== undefined)
  );
}

/** Which container of `pod` reports, or undefined when the pod is not one vdisk follows. */
function reportingContainer(pod: V1Pod): string | undefined {
  const labels = pod.metadata?.labels ?? {};
  if (labels[LABEL_ROLE] === ATTACH_ROLE) return 'attach';
  const operation = labels[LABEL_OPERATION];
  return operation && PROGRESS_OPERATIONS.has(operation) ? 'imager' : undefined;
}

/** The attach agent's "Attached" report line in the shape status.attachment takes; else undefined. */
export function parseAttachLine(line: string): AttachReportSeen | undefined {
  if (!line.startsWith('{') || !line.includes('"Attached"')) return undefined;
  try {
    const value = JSON.parse(line) as {
      phase?: unknown;
      device?: unknown;
      partitions?: Array<{ name?: unknown; start?: unknown; size?: unknown; mountPath?: unknown }>;
    };
    if (value.phase !== 'Attached' || typeof value.device !== 'string' || value.device === '')
      return undefined;
    const partitions = (Array.isArray(value.partitions) ? value.partitions : [])
      .filter(
        (partition) =>
          typeof partition.name === 'string' &&
          Number.isSafeInteger(partition.start) &&
          Number.isSafeInteger(partition.size) &&
          (partition.start as number) >= 0 &&
          (partition.size as number) >= 0,
      )
      .slice(0, 128)
      .map((partition) => ({
        name: String(partition.name).slice(0, 128),
        start: partition.start as number,
        size: partition.size as number,
        ...(typeof partition.mountPath === 'string' ? { mountPath: partition.mountPath.slice(0, 1024) } : {}),
      }));
    return { device: value.device.slice(0, 64), partitions };
  } catch {
    return undefined;
  }
}

/** Splits a byte stream into lines, dropping any longer than MAX_LINE_BYTES. */
class LineSplitter {
  private pending = '';
  private overlong = false;
  private readonly onLine: (line: string) => void;

  constructor(onLine: (line: string) => void) {
    this.onLine = onLine;
  }

  push(text: string): void {
    let start = 0;
    for (let newline = text.indexOf('\n'); newline >= 0; newline = text.indexOf('\n', start)) {
      const line = this.pending + text.slice(start, newline);
      if (!this.overlong) this.onLine(line);
      this.pending = '';
      this.overlong = false;
      start = newline + 1;
    }
    this.pending += text.slice(start);
    if (this.pending.length > MAX_LINE_BYTES) {
      this.pending = '';
      this.overlong = true;
    }
  }
}

/** Follows the logs of running imager and attach pods and keeps what they reported, by pod uid. */
export class PodReports implements PodReportReader {
  private readonly reports = new Map<string, PodReport>();
  private readonly follows = new Map<string, Follow>();
  private stopped = false;
  private readonly kubeConfig: KubeConfig;
  private readonly log: Logger;
  /** Told when a pod's report changed (the manager re-queues the pod's disk). */
  private readonly onReport: (pod: V1Pod) => void;
  private readonly maxStreams: number;

  constructor(kubeConfig: KubeConfig, log: Logger, onReport: (pod: V1Pod) => void, maxStreams = 64) {
    this.kubeConfig = kubeConfig;
    this.log = log;
    this.onReport = onReport;
    this.maxStreams = maxStreams;
  }

  get(uid: string | undefined): PodReport | undefined {
    return uid ? this.reports.get(uid) : undefined;
  }

  /** Number of logs followed now (metrics, tests). */
  get streams(): number {
    let count = 0;
    for (const follow of this.follows.values()) if (follow.abort) count++;
    return count;
  }

  /** Called with every pod add/update; `gone` when the pod was deleted. */
  observe(pod: V1Pod, gone = false): void {
    const uid = pod.metadata?.uid;
    const container = reportingContainer(pod);
    if (!uid || !container || this.stopped) return;
    const follow = this.follows.get(uid);
    if (gone) {
      this.end(uid);
      this.reports.delete(uid);
      return;
    }
    if (follow) {
      follow.pod = pod;
      if (!isRunning(pod)) this.end(uid);
      return;
    }
    if (!isRunning(pod) || this.streams >= this.maxStreams) return;
    // An attach pod says its report once; later updates of the pod need no new stream.
    if (container === 'attach' && this.reports.get(uid)?.attach) return;
    const started: Follow = {
      pod,
      container,
      abort: undefined,
      retries: 0,
      timer: undefined,
      finished: false,
    };
    this.follows.set(uid, started);
    this.open(uid, started, false);
  }

  /** Closes every stream. */
  stop(): void {
    this.stopped = true;
    for (const uid of [...this.follows.keys()]) this.end(uid);
  }

  private end(uid: string): void {
    const follow = this.follows.get(uid);
    if (!follow) return;
    follow.finished = true;
    if (follow.timer) clearTimeout(follow.timer);
    follow.abort?.abort();
    follow.abort = undefined;
    this.follows.delete(uid);
  }

  private open(uid: string, follow: Follow, reopening: boolean): void {
    const abort = new AbortController();
    follow.abort = abort;
    const pod = follow.pod;
    const namespace = pod.metadata?.namespace ?? 'default';
    const name = pod.metadata?.name ?? '';
    const splitter = new LineSplitter((line) => this.onLine(uid, follow, line));
    this.stream(namespace, name, follow.container, reopening, abort.signal, (text) => splitter.push(text))
      .then(
        () => undefined,
        (err: unknown) => {
          if (!abort.signal.aborted)
            this.log.debug({ err, pod: `${namespace}/${name}` }, 'Pod log stream failed');
        },
      )
      .finally(() => {
        if (follow.abort === abort) follow.abort = undefined;
        if (follow.finished || this.stopped || !isRunning(follow.pod)) {
          this.follows.delete(uid);
          return;
        }
        // The stream ended while the container still runs (API server restart, timeout): reopen.
        if (follow.retries >= MAX_RETRIES) {
          this.log.info({ pod: `${namespace}/${name}` }, 'Stopped following pod log after repeated failures');
          follow.finished = true;
          return;
        }
        const delayMs = Math.min(RETRY_BASE_MS * 2 ** follow.retries, RETRY_MAX_MS);
        follow.retries++;
        follow.timer = setTimeout(() => {
          follow.timer = undefined;
          if (!follow.finished && !this.stopped && isRunning(follow.pod)) this.open(uid, follow, true);
        }, delayMs);
        follow.timer.unref();
      });
  }

  private onLine(uid: string, follow: Follow, line: string): void {
    const report = this.reports.get(uid) ?? {};
    const progress = parseProgressLine(line);
    if (progress !== undefined) {
      if (report.progress === progress) return;
      this.reports.set(uid, { ...report, progress });
      this.onReport(follow.pod);
      return;
    }
    if (follow.container !== 'attach') return;
    const attach = parseAttachLine(line);
    if (!attach) return;
    this.reports.set(uid, { ...report, attach });
    // The report is complete; the detach report comes with the termination message.
    follow.finished = true;
    follow.abort?.abort();
    this.onReport(follow.pod);
  }

  /** One GET of the container log with follow=true, feeding text to `onText` until it ends. */
  private async stream(
    namespace: string,
    name: string,
    container: string,
    tail: boolean,
    signal: AbortSignal,
    onText: (text: string) => void,
  ): Promise<void> {
    const cluster = this.kubeConfig.getCurrentCluster();
    if (!cluster) throw new Error('No current cluster in the kubeconfig');
    const url = new URL(
      `${cluster.server}/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}/log`,
    );
    url.searchParams.set('container', container);
    url.searchParams.set('follow', 'true');
    if (tail) url.searchParams.set('tailLines', String(TAIL_LINES));
    // node:https with the kubeconfig's TLS and credentials: a plain request whose errors stay ours.
    const options: RequestOptions = { method: 'GET', signal };
    await this.kubeConfig.applyToHTTPSOptions(options);
    const send = url.protocol === 'http:' ? httpRequest : httpsRequest;
    await new Promise<void>((resolve, reject) => {
      const request = send(url, options, (response) => {
        if (response.statusCode !== 200) {
          response.resume();
          reject(new Error(`GET ${url.pathname}: HTTP ${response.statusCode}`));
          return;
        }
        response.setEncoding('utf8');
        response.on('data', (text: string) => onText(text));
        response.on('end', () => resolve());
        response.on('error', reject);
        response.on('aborted', () => resolve());
      });
      request.on('error', reject);
      request.end();
    });
  }
}
