// The local node's Node object and heartbeats, as a kubelet keeps them (Kubernetes "Node heartbeats"):
// a Lease in kube-node-lease renewed every 10 s, and the Ready condition's lastHeartbeatTime refreshed,
// so kube-controller-manager's node lifecycle controller never marks the node NotReady or taints it.
import {
  CoordinationV1Api,
  CoreV1Api,
  type KubeConfig,
  type V1Node,
  type V1NodeCondition,
} from '@kubernetes/client-node';
import { httpStatus, JSON_PATCH, type LocalNodeLog, microTimeNow, timeNow } from './api.ts';

/** Seconds a lease stays valid without renewal (the kubelet's default). */
export const LEASE_DURATION_SECONDS = 40;
const LEASE_RENEW_INTERVAL_MS = 10_000;
const STATUS_INTERVAL_MS = 30_000;

function nodeConditions(): V1NodeCondition[] {
  const now = timeNow();
  const condition = (type: string, status: string, reason: string, message: string): V1NodeCondition => ({
    type,
    status,
    reason,
    message,
    lastHeartbeatTime: now,
    lastTransitionTime: now,
  });
  return [
    condition('Ready', 'True', 'KubeletReady', 'vdisk local node is posting ready status'),
    condition(
      'MemoryPressure',
      'False',
      'KubeletHasSufficientMemory',
      'vdisk local node has sufficient memory',
    ),
    condition('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'vdisk local node has no disk pressure'),
    condition(
      'PIDPressure',
      'False',
      'KubeletHasSufficientPID',
      'vdisk local node has sufficient PID available',
    ),
  ];
}

function nodeStatus(
  nodeName: string,
  kubeletVersion: string,
  kubeletPort: number,
): NonNullable<V1Node['status']> {
  const resources = { cpu: '16', memory: '32Gi', pods: '110', 'ephemeral-storage': '100Gi' };
  return {
    capacity: resources,
    allocatable: resources,
    conditions: nodeConditions(),
    addresses: [
      { type: 'InternalIP', address: '127.0.0.1' },
      { type: 'Hostname', address: nodeName },
    ],
    nodeInfo: {
      machineID: 'vdisk-local',
      systemUUID: 'vdisk-local',
      bootID: 'vdisk-local',
      kernelVersion: 'local',
      osImage: 'vdisk local node (processes on the host)',
      containerRuntimeVersion: 'vdisk-local://0.1.0',
      kubeletVersion,
      kubeProxyVersion: '',
      operatingSystem: 'linux',
      architecture: 'amd64',
    },
    // The apiserver proxies `kubectl logs` here (kubelet-server.ts).
    daemonEndpoints: { kubeletEndpoint: { Port: kubeletPort } },
  };
}

/** Registers the Node and keeps it Ready until stop() is called. */
export class NodeHeartbeat {
  readonly #core: CoreV1Api;
  readonly #coordination: CoordinationV1Api;
  readonly #nodeName: string;
  readonly #kubeletVersion: string;
  readonly #log: LocalNodeLog;
  readonly #kubeletPort: number;
  #timers: NodeJS.Timeout[] = [];
  #nodeUid = '';

  constructor(
    kubeConfig: KubeConfig,
    nodeName: string,
    kubeletVersion: string,
    kubeletPort: number,
    log: LocalNodeLog,
  ) {
    this.#kubeletPort = kubeletPort;
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#coordination = kubeConfig.makeApiClient(CoordinationV1Api);
    this.#nodeName = nodeName;
    this.#kubeletVersion = kubeletVersion;
    this.#log = log;
  }

  /** Creates (or adopts) the Node, posts Ready status and the first Lease, then starts the timers. */
  async start(): Promise<void> {
    const name = this.#nodeName;
    let node: V1Node;
    try {
      node = await this.#core.createNode({
        body: {
          metadata: {
            name,
            labels: {
              'kubernetes.io/hostname': name,
              'kubernetes.io/os': 'linux',
              'kubernetes.io/arch': 'amd64',
              'vdisk.dev/local-node': 'true',
            },
          },
          spec: {},
        },
      });
    } catch (err) {
      if (httpStatus(err) !== 409) throw err;
      node = await this.#core.readNode({ name });
    }
    this.#nodeUid = node.metadata?.uid ?? '';
    await this.#postStatus();
    await this.#renewLease();
    this.#timers.push(
      setInterval(
        () =>
          void this.#renewLease().catch((err) =>
            this.#log.warn('Lease renewal failed', { err: String(err) }),
          ),
        LEASE_RENEW_INTERVAL_MS,
      ),
      setInterval(
        () =>
          void this.#postStatus().catch((err) =>
            this.#log.warn('Node status update failed', { err: String(err) }),
          ),
        STATUS_INTERVAL_MS,
      ),
    );
    for (const timer of this.#timers) timer.unref();
    this.#log.info('Registered Node', { node: name });
  }

  async #postStatus(): Promise<void> {
    const status = nodeStatus(this.#nodeName, this.#kubeletVersion, this.#kubeletPort);
    await this.#core.patchNodeStatus(
      {
        name: this.#nodeName,
        body: Object.entries(status).map(([key, value]) => ({ op: 'add', path: `/status/${key}`, value })),
      },
      JSON_PATCH,
    );
  }

  async #renewLease(): Promise<void> {
    const namespace = 'kube-node-lease';
    const spec = {
      holderIdentity: this.#nodeName,
      leaseDurationSeconds: LEASE_DURATION_SECONDS,
      renewTime: microTimeNow(),
    };
    try {
      await this.#coordination.patchNamespacedLease(
        { name: this.#nodeName, namespace, body: [{ op: 'add', path: '/spec', value: spec }] },
        JSON_PATCH,
      );
    } catch (err) {
      if (httpStatus(err) !== 404) throw err;
      await this.#coordination.createNamespacedLease({
        namespace,
        body: {
          metadata: {
            name: this.#nodeName,
            ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: this.#nodeName, uid: this.#nodeUid }],
          },
          spec,
        },
      });
    }
  }

  /** Stops the heartbeats (the Node stays; its Lease expires after LEASE_DURATION_SECONDS). */
  stop(): void {
    for (const timer of this.#timers) clearInterval(timer);
    this.#timers = [];
  }
}
