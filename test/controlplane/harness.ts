// A real Kubernetes control plane for tests and local development: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler as child processes on free 127.0.0.1 ports, with
// generated certificates and an admin client certificate (system:masters). Flags follow envtest/kwokctl.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { binaryPath, ensureAssets } from './assets.ts';
import { type ControlPlaneCerts, reuseOrGenerateCerts } from './certs.ts';
import { freePort, httpsGet, waitFor } from './net.ts';
import {
  forgetTempFolder,
  type ManagedProcess,
  processGroupMembers,
  removeTempFolderOnCrash,
  startProcess,
  stopProcess,
} from './processes.ts';

/** Options for {@link startControlPlane}. */
export interface ControlPlaneOptions {
  /** Folder with the binaries; default: build or reuse via {@link ensureAssets}. */
  assetsDir?: string;
  /**
   * Working folder (certs, etcd data, logs, kubeconfig); default: a fresh mkdtemp folder, removed by stop().
   * A given folder is kept by stop(), and its certificates and etcd data are reused by the next start.
   */
  dir?: string;
  /** Start kube-controller-manager (Job controller, garbage collector, PV binder, ...). Default true. */
  controllerManager?: boolean;
  /** Start kube-scheduler (needed for Job/Deployment pods). Default true. */
  scheduler?: boolean;
  /** Leave the processes running when this Node.js process exits (cluster:up). Default false. */
  detached?: boolean;
  /** Readiness timeout for each component in ms. Default 120000. */
  startTimeoutMs?: number;
}

/** A running control plane. */
export interface ControlPlane {
  /** Admin credentials for @kubernetes/client-node (cluster-admin through system:masters). */
  kubeConfig: KubeConfig;
  /** The same credentials as a kubeconfig file (embedded PEM data), usable by kubectl. */
  kubeconfigPath: string;
  /** https://127.0.0.1:<port> */
  serverUrl: string;
  /** Working folder: certs, `etcd/`, `logs/<component>.log`, `admin.kubeconfig`. */
  dir: string;
  /** Folder with the binaries (kubectl is `<assetsDir>/kubectl`). */
  assetsDir: string;
  certs: ControlPlaneCerts;
  processes: readonly ManagedProcess[];
  /** Stops every component (reverse start order, by PID/process group) and, if it made it, removes `dir`. */
  stop(): Promise<void>;
}

/** The last lines of a component log, for error messages (logs are removed with the folder). */
async function logTail(path: string, lineCount = 15): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trimEnd().split('\n').slice(-lineCount).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Writes an admin kubeconfig with embedded certificates; returns it loaded. */
async function writeKubeconfig(
  path: string,
  serverUrl: string,
  certs: ControlPlaneCerts,
): Promise<KubeConfig> {
  const b64 = async (p: string) => (await readFile(p)).toString('base64');
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [
      { name: 'vdisk-test', server: serverUrl, caData: await b64(certs.caCertPath), skipTLSVerify: false },
    ],
    users: [
      {
        name: 'vdisk-admin',
        certData: await b64(certs.adminCertPath),
        keyData: await b64(certs.adminKeyPath),
      },
    ],
    contexts: [{ name: 'vdisk-test', cluster: 'vdisk-test', user: 'vdisk-admin' }],
    currentContext: 'vdisk-test',
  });
  // kubectl reads JSON kubeconfigs as well as YAML.
  await writeFile(path, kubeConfig.exportConfig(), { mode: 0o600 });
  return kubeConfig;
}

/**
 * Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler and waits until each is healthy
 * (/health, /readyz, /healthz). Throws (after stopping what did start) when a component does not come up;
 * its log is under `<dir>/logs/`. Throws when the binaries are missing and cannot be built.
 */
export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  let assetsDir = options.assetsDir;
  if (assetsDir === undefined) {
    const assets = await ensureAssets();
    if (!assets.ok) throw new Error(`no control-plane binaries: ${assets.skipReason}`);
    assetsDir = assets.dir;
  }
  const ownsDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'vdisk-controlplane-')));
  if (ownsDir) removeTempFolderOnCrash(dir);
  const logsDir = join(dir, 'logs');
  await mkdir(logsDir, { recursive: true });
  const timeoutMs = options.startTimeoutMs ?? 120_000;
  const processes: ManagedProcess[] = [];
  const bin = (name: Parameters<typeof binaryPath>[1]) => binaryPath(assetsDir, name);
  const launch = (name: string, command: string, args: string[]) => {
    const proc = startProcess({
      name,
      command,
      args,
      logPath: join(logsDir, `${name}.log`),
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? dir },
      unref: options.detached,
    });
    processes.push(proc);
    return proc;
  };
  const crashed = (proc: ManagedProcess) => () =>
    proc.hasExited() ? `${proc.name} exited early; see ${proc.logPath}` : undefined;

  const stop = async () => {
    for (const proc of [...processes].reverse()) await stopProcess(proc);
    for (const proc of processes) {
      const left = await processGroupMembers(proc.pid);
      if (left.length > 0) throw new Error(`${proc.name} left processes behind: ${left.join(', ')}`);
    }
    if (ownsDir) {
      await rm(dir, { recursive: true, force: true });
      forgetTempFolder(dir);
    }
  };

  try {
    // A given dir that already holds certificates and etcd data is a restarted cluster: both are reused.
    const certs = await reuseOrGenerateCerts(dir);
    const [etcdClientPort, etcdPeerPort, apiPort, controllerManagerPort, schedulerPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);

    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const etcdPeerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    const etcd = launch('etcd', bin('etcd'), [
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${etcdPeerUrl}`,
      `--initial-advertise-peer-urls=${etcdPeerUrl}`,
      `--initial-cluster=default=${etcdPeerUrl}`,
      '--unsafe-no-fsync=true',
      '--log-level=warn',
    ]);
    await waitFor(
      'etcd /health',
      async () => {
        try {
          const res = await fetch(`${etcdUrl}/health`, { signal: AbortSignal.timeout(2_000) });
          return res.ok || `status ${res.status}`;
        } catch (err) {
          return String(err);
        }
      },
      { timeoutMs, failFast: crashed(etcd) },
    );

    const serverUrl = `https://127.0.0.1:${apiPort}`;
    const apiserver = launch('kube-apiserver', bin('kube-apiserver'), [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${apiPort}`,
      `--tls-cert-file=${certs.apiserverCertPath}`,
      `--tls-private-key-file=${certs.apiserverKeyPath}`,
      `--client-ca-file=${certs.caCertPath}`,
      '--authorization-mode=RBAC',
      '--service-cluster-ip-range=10.0.0.0/24',
      `--service-account-issuer=${serverUrl}/`,
      `--service-account-key-file=${certs.serviceAccountPublicKeyPath}`,
      `--service-account-signing-key-file=${certs.serviceAccountKeyPath}`,
      // Pods run as local processes (local-node.ts) and need no token volume; this also avoids the race of
      // pods created in a new namespace before its `default` ServiceAccount exists.
      '--disable-admission-plugins=ServiceAccount',
      '--allow-privileged=true',
      '--endpoint-reconciler-type=none',
      // `kubectl logs` reaches the local node's kubelet endpoint on 127.0.0.1 (its InternalIP).
      '--kubelet-preferred-address-types=InternalIP',
      '--profiling=false',
    ]);
    const tls = {
      ca: await readFile(certs.caCertPath),
      cert: await readFile(certs.adminCertPath),
      key: await readFile(certs.adminKeyPath),
    };
    await waitFor(
      'kube-apiserver /readyz',
      async () => {
        const res = await httpsGet(`${serverUrl}/readyz`, tls);
        return res.status === 200 || `status ${res.status}: ${res.body.slice(0, 300)}`;
      },
      { timeoutMs, intervalMs: 200, failFast: crashed(apiserver) },
    );

    const kubeconfigPath = join(dir, 'admin.kubeconfig');
    const kubeConfig = await writeKubeconfig(kubeconfigPath, serverUrl, certs);

    const healthz = async (port: number) => {
      const res = await httpsGet(`https://127.0.0.1:${port}/healthz`, { insecure: true });
      return res.status === 200 || `status ${res.status}: ${res.body.slice(0, 300)}`;
    };
    const waits: Promise<void>[] = [];
    if (options.controllerManager !== false) {
      const controllerManager = launch('kube-controller-manager', bin('kube-controller-manager'), [
        `--kubeconfig=${kubeconfigPath}`,
        `--authentication-kubeconfig=${kubeconfigPath}`,
        `--authorization-kubeconfig=${kubeconfigPath}`,
        '--leader-elect=false',
        `--service-account-private-key-file=${certs.serviceAccountKeyPath}`,
        `--root-ca-file=${certs.caCertPath}`,
        '--bind-address=127.0.0.1',
        `--secure-port=${controllerManagerPort}`,
        `--cert-dir=${join(dir, 'kcm-certs')}`,
        '--profiling=false',
      ]);
      waits.push(
        waitFor('kube-controller-manager /healthz', () => healthz(controllerManagerPort), {
          timeoutMs,
          intervalMs: 200,
          failFast: crashed(controllerManager),
        }),
      );
    }
    if (options.scheduler !== false) {
      const scheduler = launch('kube-scheduler', bin('kube-scheduler'), [
        `--kubeconfig=${kubeconfigPath}`,
        `--authentication-kubeconfig=${kubeconfigPath}`,
        `--authorization-kubeconfig=${kubeconfigPath}`,
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
        `--secure-port=${schedulerPort}`,
        `--cert-dir=${join(dir, 'scheduler-certs')}`,
        '--profiling=false',
      ]);
      waits.push(
        waitFor('kube-scheduler /healthz', () => healthz(schedulerPort), {
          timeoutMs,
          intervalMs: 200,
          failFast: crashed(scheduler),
        }),
      );
    }
    await Promise.all(waits);

    return { kubeConfig, kubeconfigPath, serverUrl, dir, assetsDir, certs, processes, stop };
  } catch (err) {
    const tails = await Promise.all(
      processes.map(async (proc) => `--- ${proc.name}:\n${await logTail(proc.logPath)}`),
    );
    await stop().catch(() => undefined);
    throw new Error(`${(err as Error).message}\n${tails.join('\n')}`, { cause: err });
  }
}
