// Kubernetes Events the local node records about pods, as the kubelet does (source component
// "kubelet"): Started, Killing, BackOff, and Warnings for pods it cannot run. Best effort: never throws.
import type { CoreV1Api, V1Pod } from '@kubernetes/client-node';

/** Records one Event about a pod. */
export type PodEventRecorder = (
  pod: V1Pod,
  type: 'Normal' | 'Warning',
  reason: string,
  message: string,
) => void;

/** A recorder writing core/v1 Events through `core`, attributed to the kubelet on `nodeName`. */
export function podEventRecorder(core: CoreV1Api, nodeName: string): PodEventRecorder {
  return (pod, type, reason, message) => {
    const { name = '', namespace = 'default', uid } = pod.metadata ?? {};
    const now = new Date();
    core
      .createNamespacedEvent({
        namespace,
        body: {
          metadata: { generateName: `${name}.`, namespace },
          involvedObject: { apiVersion: 'v1', kind: 'Pod', name, namespace, uid },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: 'kubelet', host: nodeName },
          reportingComponent: 'kubelet',
          reportingInstance: nodeName,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      })
      .catch(() => undefined);
  };
}
