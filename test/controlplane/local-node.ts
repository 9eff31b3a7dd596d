// vdisk's local node: a Ready Node (heartbeat Lease), a local StorageClass with a hostPath provisioner,
// and a kubelet stand-in that runs pods of vdisk images as local processes (see README.md here).
// Used by the integration tier's globalSetup and by `npm run cluster:up`.
import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { type LocalNodeLog, stderrLog } from './local-node/api.ts';
import { NodeHeartbeat } from './local-node/node-heartbeat.ts';
import { PodRunner } from './local-node/pod-runner.ts';
import { ENTRYPOINTS } from './local-node/pod-spec.ts';
import { LocalVolumes } from './local-node/volumes.ts';
import { selfSignedServingCert } from './certs.ts';
import { startKubeletServer } from './local-node/kubelet-server.ts';
import { waitFor } from './net.ts';

/** Repository root (bin/vdisk.mjs lives there). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Options of {@link startLocalNode}; every field has a default. */
export interface LocalNodeOptions {
  /** Node name; default `vdisk-local`. */
  nodeName?: string;
  /** StorageClass created and served; default `vdisk-local` (made the default class). */
  storageClassName?: string;
  /** Provisioner name of that class; default `vdisk.dev/local`. */
  provisionerName?: string;
  /** Folder for pod state (logs, emptyDirs); default `<repo>/.local/node`. */
  stateDir?: string;
  /** Folder holding PV folders; default `<repo>/.local/volumes`. */
  volumesDir?: string;
  /** Kubeconfig file exported to containers as KUBECONFIG (in-pod clients); default none. */
  podKubeconfigPath?: string;
  /** Reported kubelet version; default v1.34.4. */
  kubeletVersion?: string;
  /** Restart backoff of crashing containers; default 1 s doubling to 30 s. */
  restartBackoffMs?: { initial: number; max: number };
  /** Extra entry points (command[0] -> script path relative to the repo root), e.g. test fixtures. */
  extraEntrypoints?: Readonly<Record<string, string>>;
  /** Silence the JSON log lines on stderr. Default false. */
  quiet?: boolean;
  log?: LocalNodeLog;
}

/** A running local node. */
export interface LocalNode {
  nodeName: string;
  storageClassName: string;
  provisionerName: string;
  stateDir: string;
  volumesDir: string;
  /** PIDs of container processes running now. */
  runningPids(): number[];
  /** Stops pods (SIGTERM, <= 5 s grace, SIGKILL), watches and heartbeats. The Node object stays. */
  stop(): Promise<void>;
}

/**
 * Registers the node, starts heartbeats, the provisioner and the pod runner, and waits until the node is
 * Ready without the not-ready taint (so the scheduler places pods on it). Throws on API errors.
 */
export async function startLocalNode(
  kubeConfig: KubeConfig,
  options: LocalNodeOptions = {},
): Promise<LocalNode> {
  const nodeName = options.nodeName ?? 'vdisk-local';
  const storageClassName = options.storageClassName ?? 'vdisk-local';
  const provisionerName = options.provisionerName ?? 'vdisk.dev/local';
  const stateDir = resolve(options.stateDir ?? join(REPO_ROOT, '.local', 'node'));
  const volumesDir = resolve(options.volumesDir ?? join(REPO_ROOT, '.local', 'volumes'));
  const log = options.log ?? stderrLog(options.quiet ?? false);
  await mkdir(stateDir, { recursive: true });

  let pods: PodRunner | undefined;
  const kubeletDir = join(stateDir, 'kubelet');
  await mkdir(kubeletDir, { recursive: true });
  const kubelet = await startKubeletServer(
    await selfSignedServingCert(kubeletDir, nodeName),
    (namespace, pod, container) => pods?.logSource(namespace, pod, container),
  );
  const heartbeat = new NodeHeartbeat(
    kubeConfig,
    nodeName,
    options.kubeletVersion ?? 'v1.34.4',
    kubelet.port,
    log,
  );
  const volumes = new LocalVolumes(
    kubeConfig,
    { nodeName, storageClassName, provisionerName, volumesDir, isDefaultClass: true },
    log,
  );
  pods = new PodRunner(
    kubeConfig,
    {
      nodeName,
      repoRoot: REPO_ROOT,
      stateDir,
      nodeBinary: process.execPath,
      entrypoints: { ...ENTRYPOINTS, ...options.extraEntrypoints },
      hostIp: '127.0.0.1',
      podKubeconfigPath: options.podKubeconfigPath,
      claimFolder: (namespace, claimName) => volumes.claimFolder(namespace, claimName),
      restartBackoffMs: options.restartBackoffMs ?? { initial: 1_000, max: 30_000 },
    },
    log,
  );
  const runner = pods;
  const stop = async () => {
    heartbeat.stop();
    await runner.stop();
    await volumes.stop();
    kubelet.server.closeAllConnections();
    await new Promise((resolve) => kubelet.server.close(resolve));
  };
  try {
    await heartbeat.start();
    await volumes.start();
    await runner.start();
    const core = kubeConfig.makeApiClient(CoreV1Api);
    await waitFor(
      `node ${nodeName} Ready and schedulable`,
      async () => {
        const node = await core.readNode({ name: nodeName });
        const ready = node.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
        const taints = (node.spec?.taints ?? []).map((t) => t.key);
        return (ready && taints.length === 0) || `ready=${ready} taints=${taints.join(',')}`;
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return {
    nodeName,
    storageClassName,
    provisionerName,
    stateDir,
    volumesDir,
    runningPids: () => runner.runningPids(),
    stop,
  };
}
