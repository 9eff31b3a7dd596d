// Pure construction of a pod's status as the kubelet reports it (phase, conditions, container
// statuses with exit codes and termination messages), and the JSON patch that writes it.
import type { V1ContainerStatus, V1Pod, V1PodCondition } from '@kubernetes/client-node';

/** Where one container is in its life, as the local node tracks it. */
export type ContainerPhase =
  | { kind: 'waiting'; reason: string; message?: string }
  | { kind: 'running'; startedAt: Date; pid: number }
  | {
      kind: 'terminated';
      exitCode: number;
      signal?: number;
      reason: string;
      message?: string;
      startedAt: Date;
      finishedAt: Date;
      pid: number;
    };

/** One container's tracked state. */
export interface ContainerRecord {
  name: string;
  image: string;
  restartCount: number;
  current: ContainerPhase;
  lastTerminated?: ContainerPhase & { kind: 'terminated' };
}

/** Everything needed to compute a pod status. */
export interface PodRecord {
  phase: 'Pending' | 'Running' | 'Succeeded' | 'Failed';
  reason?: string;
  message?: string;
  startTime?: Date;
  hostIp: string;
  initContainers: ContainerRecord[];
  containers: ContainerRecord[];
}

function stateOf(phase: ContainerPhase): V1ContainerStatus['state'] {
  switch (phase.kind) {
    case 'waiting':
      return { waiting: { reason: phase.reason, message: phase.message } };
    case 'running':
      return { running: { startedAt: phase.startedAt } };
    case 'terminated':
      return {
        terminated: {
          exitCode: phase.exitCode,
          signal: phase.signal,
          reason: phase.reason,
          message: phase.message,
          startedAt: phase.startedAt,
          finishedAt: phase.finishedAt,
          containerID: `vdisk-local://${phase.pid}`,
        },
      };
  }
}

function containerStatus(record: ContainerRecord): V1ContainerStatus {
  const current = record.current;
  const pid = current.kind === 'waiting' ? undefined : current.pid;
  return {
    name: record.name,
    image: record.image,
    imageID: record.image,
    containerID: pid === undefined ? undefined : `vdisk-local://${pid}`,
    ready: current.kind === 'running',
    started: current.kind === 'running',
    restartCount: record.restartCount,
    state: stateOf(current),
    lastState: record.lastTerminated === undefined ? {} : stateOf(record.lastTerminated),
  };
}

function condition(
  type: string,
  isTrue: boolean,
  previous: V1PodCondition | undefined,
  reason?: string,
): V1PodCondition {
  const status = isTrue ? 'True' : 'False';
  return {
    type,
    status,
    reason: isTrue ? undefined : reason,
    lastProbeTime: undefined,
    lastTransitionTime: previous?.status === status ? previous.lastTransitionTime : new Date(),
  };
}

/** The pod's conditions: the scheduler's PodScheduled kept, the kubelet-owned ones recomputed. */
export function podConditions(pod: V1Pod, record: PodRecord): V1PodCondition[] {
  const previous = new Map((pod.status?.conditions ?? []).map((c) => [c.type, c]));
  const initialized =
    record.initContainers.every((c) => c.current.kind === 'terminated' && c.current.exitCode === 0) &&
    record.phase !== 'Pending';
  const allRunning =
    record.containers.length > 0 && record.containers.every((c) => c.current.kind === 'running');
  const notReadyReason =
    record.phase === 'Succeeded' || record.phase === 'Failed' ? 'PodCompleted' : 'ContainersNotReady';
  const ours: V1PodCondition[] = [
    condition(
      'PodReadyToStartContainers',
      record.phase !== 'Pending' || record.startTime !== undefined,
      previous.get('PodReadyToStartContainers'),
    ),
    condition(
      'Initialized',
      initialized || record.initContainers.length === 0,
      previous.get('Initialized'),
      'ContainersNotInitialized',
    ),
    condition('Ready', allRunning, previous.get('Ready'), notReadyReason),
    condition('ContainersReady', allRunning, previous.get('ContainersReady'), notReadyReason),
  ];
  const oursTypes = new Set(ours.map((c) => c.type));
  return [...(pod.status?.conditions ?? []).filter((c) => !oursTypes.has(c.type)), ...ours];
}

/** JSON patch operations ('add' replaces existing members) that write the record into pod.status. */
export function podStatusPatch(
  pod: V1Pod,
  record: PodRecord,
): Array<{ op: 'add'; path: string; value: unknown }> {
  const ops: Array<{ op: 'add'; path: string; value: unknown }> = [];
  const set = (field: string, value: unknown) => ops.push({ op: 'add', path: `/status/${field}`, value });
  set('phase', record.phase);
  set('conditions', podConditions(pod, record));
  set('containerStatuses', record.containers.map(containerStatus));
  if (record.initContainers.length > 0)
    set('initContainerStatuses', record.initContainers.map(containerStatus));
  if (record.reason !== undefined) set('reason', record.reason);
  if (record.message !== undefined) set('message', record.message);
  if (record.startTime !== undefined) {
    set('startTime', record.startTime);
    set('hostIP', record.hostIp);
    set('hostIPs', [{ ip: record.hostIp }]);
    set('podIP', record.hostIp);
    set('podIPs', [{ ip: record.hostIp }]);
  }
  return ops;
}
