// The life of one pod on the local node, as the kubelet runs it: volumes, init containers in order,
// then the containers as local process groups with restartPolicy (Never / OnFailure / Always with
// backoff), status after every transition, and termination with SIGTERM, grace period, SIGKILL.
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants as osConstants } from 'node:os';
import type { CoreV1Api, V1Container, V1Pod } from '@kubernetes/client-node';
import { mapPath, parsePathMap, PATH_MAP_ENV } from '../../../src/agent/runtime/paths.ts';
import { type ManagedProcess, startProcess, stopProcessGroup } from '../processes.ts';
import { httpStatus, JSON_PATCH, type LocalNodeLog } from './api.ts';
import type { PodEventRecorder } from './events.ts';
import {
  containerArgv,
  containerEnv,
  type DataLookup,
  type Entrypoints,
  unsupportedReason,
} from './pod-spec.ts';
import { type ContainerRecord, type PodRecord, podStatusPatch } from './pod-status.ts';
import {
  type ClaimFolderLookup,
  containerPathMap,
  preparePodVolumes,
  VolumeNotReadyError,
} from './pod-volumes.ts';

/** The kubelet's cap on a termination message, in bytes. */
const TERMINATION_MESSAGE_MAX_BYTES = 4096;
/** FallbackToLogsOnError: at most this many bytes of the log tail. */
const LOG_FALLBACK_MAX_BYTES = 2048;

/** What a worker needs from the local node. */
export interface PodWorkerContext {
  core: CoreV1Api;
  repoRoot: string;
  /** Folder for pod folders (`pods/<uid>/`: logs, termination messages, emptyDirs). */
  stateDir: string;
  nodeBinary: string;
  /** command[0] -> script (relative to repoRoot) for the containers it may run. */
  entrypoints: Entrypoints;
  hostIp: string;
  /** Exported to containers as KUBECONFIG so in-pod API clients reach this cluster (admin rights). */
  podKubeconfigPath?: string;
  claimFolder: ClaimFolderLookup;
  lookup: (namespace: string) => DataLookup;
  log: LocalNodeLog;
  /** Records Kubernetes Events about the pod. */
  recordEvent: PodEventRecorder;
  /** Restart backoff: first delay and cap, in ms. */
  restartBackoffMs: { initial: number; max: number };
}

function isTerminal(phase: PodRecord['phase']): boolean {
  return phase === 'Succeeded' || phase === 'Failed';
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === null ? 0 : (osConstants.signals[signal] ?? 0);
}

async function readCapped(path: string, maxBytes: number, fromEnd: boolean): Promise<string> {
  const handle = await open(path, 'r').catch(() => undefined);
  if (handle === undefined) return '';
  try {
    const { size } = await handle.stat();
    const lengthBytes = Math.min(size, maxBytes);
    const buffer = Buffer.alloc(lengthBytes);
    await handle.read(buffer, 0, lengthBytes, fromEnd ? size - lengthBytes : 0);
    return buffer.toString('utf8');
  } finally {
    await handle.close();
  }
}

/** Runs one pod until it ends or is terminated. */
export class PodWorker {
  readonly #context: PodWorkerContext;
  #pod: V1Pod;
  readonly #record: PodRecord;
  readonly #running = new Map<string, ManagedProcess>();
  readonly #abort = new AbortController();
  #done: Promise<void> = Promise.resolve();
  #statusDirty = false;
  #statusLoop: Promise<void> | undefined;
  #podDir: string;
  #volumeFolders = new Map<string, string>();

  constructor(context: PodWorkerContext, pod: V1Pod) {
    this.#context = context;
    this.#pod = pod;
    this.#podDir = join(context.stateDir, 'pods', pod.metadata?.uid ?? 'unknown');
    const records = (containers: V1Container[] | undefined, reason: string): ContainerRecord[] =>
      (containers ?? []).map((c) => ({
        name: c.name,
        image: c.image ?? '',
        restartCount: 0,
        current: { kind: 'waiting', reason },
      }));
    const hasInit = (pod.spec?.initContainers ?? []).length > 0;
    this.#record = {
      phase: 'Pending',
      hostIp: context.hostIp,
      initContainers: records(pod.spec?.initContainers, 'PodInitializing'),
      containers: records(pod.spec?.containers, hasInit ? 'PodInitializing' : 'ContainerCreating'),
    };
  }

  get #key(): string {
    return `${this.#pod.metadata?.namespace}/${this.#pod.metadata?.name}`;
  }

  get #stopping(): boolean {
    return this.#abort.signal.aborted;
  }

  /** Takes the newest copy of the pod (from the watch). */
  update(pod: V1Pod): void {
    this.#pod = pod;
  }

  /** Starts running the pod in the background. */
  start(): void {
    this.#done = this.#run().catch(async (err) => {
      // A pod the local node cannot set up (bad subPath, broken volume) fails instead of hanging in Pending.
      this.#context.log.warn('Pod worker failed', { pod: this.#key, err: String(err) });
      if (isTerminal(this.#record.phase)) return;
      this.#record.phase = 'Failed';
      this.#record.reason = 'LocalNodeError';
      this.#record.message = String(err).slice(0, TERMINATION_MESSAGE_MAX_BYTES);
      this.#context.recordEvent(this.#pod, 'Warning', 'LocalNodeError', this.#record.message);
      await this.#flushStatus();
    });
  }

  /** True once the pod reached Succeeded or Failed. */
  get isFinished(): boolean {
    return isTerminal(this.#record.phase);
  }

  async #run(): Promise<void> {
    const spec = this.#pod.spec;
    const all = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])];
    const unsupported = all
      .map((c) => unsupportedReason(c, this.#context.entrypoints))
      .filter((reason) => reason !== undefined);
    if (unsupported.length > 0) {
      for (const rec of [...this.#record.initContainers, ...this.#record.containers]) {
        rec.current = { kind: 'waiting', reason: 'UnsupportedImage', message: unsupported.join('; ') };
      }
      this.#record.phase = 'Failed';
      this.#record.reason = 'UnsupportedImage';
      this.#record.message = `the vdisk local node cannot run this pod: ${unsupported.join('; ')}`;
      this.#context.log.info('Rejected Pod', { pod: this.#key, reason: 'UnsupportedImage' });
      this.#context.recordEvent(this.#pod, 'Warning', 'UnsupportedImage', this.#record.message);
      await this.#flushStatus();
      return;
    }
    await this.#flushStatus();
    if (!(await this.#prepareVolumes())) return;
    this.#record.startTime = new Date();

    const initContainers = spec?.initContainers ?? [];
    for (const [index, container] of initContainers.entries()) {
      const rec = this.#record.initContainers[index];
      if (rec === undefined) continue;
      for (;;) {
        const exitCode = await this.#runContainer(container, rec);
        if (this.#stopping) return;
        if (exitCode === 0) break;
        if ((spec?.restartPolicy ?? 'Always') === 'Never') {
          this.#record.phase = 'Failed';
          await this.#flushStatus();
          return;
        }
        if (!(await this.#backoff(rec, exitCode))) return;
      }
    }
    for (const rec of this.#record.containers) rec.current = { kind: 'waiting', reason: 'ContainerCreating' };

    const containers = spec?.containers ?? [];
    await Promise.all(
      containers.map((container, index) => {
        const rec = this.#record.containers[index];
        return rec === undefined ? Promise.resolve() : this.#containerLoop(container, rec);
      }),
    );
    if (this.#stopping) return;
    this.#finish();
    await this.#flushStatus();
  }

  /** Sets the terminal phase from the containers' last exit codes. */
  #finish(): void {
    if (isTerminal(this.#record.phase)) return;
    const allSucceeded = this.#record.containers.every(
      (c) => c.current.kind === 'terminated' && c.current.exitCode === 0,
    );
    this.#record.phase = allSucceeded ? 'Succeeded' : 'Failed';
    this.#context.log.info('Pod finished', { pod: this.#key, phase: this.#record.phase });
  }

  /** Resolves volumes, waiting (re-checking every second) while a PVC is unbound. False when stopped. */
  async #prepareVolumes(): Promise<boolean> {
    const namespace = this.#pod.metadata?.namespace ?? 'default';
    let lastMessage = '';
    while (!this.#stopping) {
      try {
        await mkdir(this.#podDir, { recursive: true });
        this.#volumeFolders = await preparePodVolumes(
          this.#pod,
          this.#podDir,
          this.#context.claimFolder,
          this.#context.lookup(namespace),
        );
        return true;
      } catch (err) {
        if (!(err instanceof VolumeNotReadyError)) throw err;
        if (err.message !== lastMessage) {
          lastMessage = err.message;
          for (const rec of [...this.#record.initContainers, ...this.#record.containers]) {
            rec.current = { kind: 'waiting', reason: 'ContainerCreating', message: err.message };
          }
          await this.#flushStatus();
        }
        await this.#sleep(1_000);
      }
    }
    return false;
  }

  async #containerLoop(container: V1Container, rec: ContainerRecord): Promise<void> {
    const policy = this.#pod.spec?.restartPolicy ?? 'Always';
    for (;;) {
      const exitCode = await this.#runContainer(container, rec);
      if (this.#stopping) return;
      const shouldRestart = policy === 'Always' || (policy === 'OnFailure' && exitCode !== 0);
      if (!shouldRestart) return;
      if (!(await this.#backoff(rec, exitCode))) return;
    }
  }

  /** Waits the restart backoff with the container shown as waiting; false when stopped meanwhile. */
  async #backoff(rec: ContainerRecord, exitCode: number): Promise<boolean> {
    if (rec.current.kind === 'terminated') rec.lastTerminated = rec.current;
    const { initial, max } = this.#context.restartBackoffMs;
    const delayMs = Math.min(max, initial * 2 ** Math.min(rec.restartCount, 20));
    rec.current = {
      kind: 'waiting',
      reason: 'CrashLoopBackOff',
      message: `back-off ${delayMs} ms restarting container ${rec.name} (exit code ${exitCode})`,
    };
    this.#context.recordEvent(
      this.#pod,
      'Warning',
      'BackOff',
      `Back-off restarting failed container ${rec.name}`,
    );
    await this.#flushStatus();
    await this.#sleep(delayMs);
    if (this.#stopping) return false;
    rec.restartCount += 1;
    return true;
  }

  /** Runs the container once; resolves with its exit code (128 + signal when killed). */
  async #runContainer(container: V1Container, rec: ContainerRecord): Promise<number> {
    const containerDir = join(this.#podDir, 'containers', container.name);
    const terminationLogPath = join(containerDir, 'termination-log');
    const logPath = join(this.#podDir, `${container.name}.log`);
    const startedAt = new Date();
    let proc: ManagedProcess;
    try {
      await mkdir(containerDir, { recursive: true });
      await writeFile(terminationLogPath, '');
      const namespace = this.#pod.metadata?.namespace ?? 'default';
      const env = await containerEnv(
        this.#pod,
        container,
        this.#context.lookup(namespace),
        this.#context.hostIp,
      );
      const pathMap = await containerPathMap(container, this.#volumeFolders, terminationLogPath);
      const argv = containerArgv(
        container,
        env,
        this.#context.repoRoot,
        this.#context.nodeBinary,
        this.#context.entrypoints,
      );
      const cwd = container.workingDir
        ? mapPath(parsePathMap(JSON.stringify(pathMap)), container.workingDir)
        : this.#podDir;
      await mkdir(cwd, { recursive: true });
      const host = process.env;
      proc = startProcess({
        name: `${this.#key}/${container.name}`,
        command: argv[0] ?? this.#context.nodeBinary,
        args: argv.slice(1),
        logPath,
        cwd,
        env: {
          PATH: host.PATH,
          HOME: host.HOME,
          LANG: host.LANG,
          TMPDIR: host.TMPDIR,
          ...(this.#context.podKubeconfigPath ? { KUBECONFIG: this.#context.podKubeconfigPath } : {}),
          ...env,
          [PATH_MAP_ENV]: JSON.stringify(pathMap),
        },
      });
    } catch (err) {
      rec.current = {
        kind: 'terminated',
        exitCode: 128,
        reason: 'StartError',
        message: String(err).slice(0, TERMINATION_MESSAGE_MAX_BYTES),
        startedAt,
        finishedAt: new Date(),
        pid: 0,
      };
      await this.#flushStatus();
      return 128;
    }
    this.#running.set(container.name, proc);
    rec.current = { kind: 'running', startedAt, pid: proc.pid };
    if (this.#record.phase === 'Pending' && this.#record.containers.includes(rec))
      this.#record.phase = 'Running';
    this.#context.recordEvent(this.#pod, 'Normal', 'Started', `Started container ${container.name}`);
    this.#context.log.info('Started container', { pod: this.#key, container: container.name, pid: proc.pid });
    await this.#flushStatus();

    const { code, signal } = await proc.exited;
    this.#running.delete(container.name);
    const exitCode = code ?? 128 + signalNumber(signal);
    let message = (await readCapped(terminationLogPath, TERMINATION_MESSAGE_MAX_BYTES, false)).trim();
    if (message === '' && exitCode !== 0 && container.terminationMessagePolicy === 'FallbackToLogsOnError') {
      message = (await readCapped(logPath, LOG_FALLBACK_MAX_BYTES, true)).trim();
    }
    rec.current = {
      kind: 'terminated',
      exitCode,
      signal: signal === null ? undefined : signalNumber(signal),
      reason: exitCode === 0 ? 'Completed' : 'Error',
      message: message === '' ? undefined : message,
      startedAt,
      finishedAt: new Date(),
      pid: proc.pid,
    };
    this.#context.log.info('Container exited', { pod: this.#key, container: container.name, exitCode });
    await this.#flushStatus();
    return exitCode;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.#stopping) return resolve();
      const timer = setTimeout(resolve, ms);
      this.#abort.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }

  /** Writes the current record to the pod status; coalesces concurrent calls. 404 (pod gone) is ignored. */
  #flushStatus(): Promise<void> {
    this.#statusDirty = true;
    if (this.#statusLoop === undefined) {
      this.#statusLoop = (async () => {
        while (this.#statusDirty) {
          this.#statusDirty = false;
          const { name = '', namespace = '' } = this.#pod.metadata ?? {};
          try {
            this.#pod = await this.#context.core.patchNamespacedPodStatus(
              { name, namespace, body: podStatusPatch(this.#pod, this.#record) },
              JSON_PATCH,
            );
          } catch (err) {
            if (httpStatus(err) !== 404) {
              this.#context.log.warn('Pod status update failed', { pod: this.#key, err: String(err) });
            }
          }
        }
        this.#statusLoop = undefined;
      })();
    }
    return this.#statusLoop;
  }

  /**
   * Stops the pod: SIGTERM to every running container's process group, SIGKILL after `gracePeriodMs`,
   * then the final status. Resolves when no process of the pod is left.
   */
  async terminate(gracePeriodMs: number): Promise<void> {
    this.#abort.abort();
    for (const name of this.#running.keys()) {
      this.#context.recordEvent(this.#pod, 'Normal', 'Killing', `Stopping container ${name}`);
    }
    await Promise.all([...this.#running.values()].map((proc) => stopProcessGroup(proc.pid, gracePeriodMs)));
    await this.#done;
    if (!isTerminal(this.#record.phase) && this.#record.startTime !== undefined) this.#finish();
    await this.#flushStatus();
  }

  /** Host folder of this pod (logs, termination messages, emptyDirs). */
  get podDir(): string {
    return this.#podDir;
  }

  /** True while the named container's process runs. */
  isContainerRunning(containerName: string): boolean {
    return this.#running.has(containerName);
  }

  /** PIDs (= process groups) of the containers running now. */
  get runningPids(): number[] {
    return [...this.#running.values()].map((proc) => proc.pid);
  }
}
