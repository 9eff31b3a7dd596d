// The imager Job: one pod running `vdisk-agent imager <operation>` with the disk's PVC at /data and,
// for clone/restore, the source disk's PVC read-only at /source (DESIGN.md "Pods the controller
// launches"). Pure builder; desired.ts decides when, apply.ts creates it.

import type { V1Job, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import {
  DATA_MOUNT_PATH,
  HEADERS_MOUNT_PATH,
  IMAGER_PERMANENT_FAILURE_EXIT_CODE,
  type ImagerRequest,
  imagerArgs,
  SOURCE_MOUNT_PATH,
} from '../api/imager.ts';
import {
  LABEL_DISK,
  LABEL_MANAGED_BY,
  LABEL_OPERATION,
  LABEL_OWNER_KIND,
  LABEL_SNAPSHOT,
  labelValue,
  MANAGED_BY,
} from './naming.ts';

/** Settings from the controller's flags/env that shape the pods it launches. */
export interface PodSettings {
  /** Container image of the agents (`vdisk:dev`, `ghcr.io/.../vdisk:0.1.0`). */
  agentImage: string;
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** Hard limit on one imager run. */
  activeDeadlineSeconds: number;
}

export const DEFAULT_POD_SETTINGS: PodSettings = {
  agentImage: 'vdisk:dev',
  imagePullPolicy: 'IfNotPresent',
  activeDeadlineSeconds: 6 * 3600,
};

export interface OwnerRef {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
}

export interface ImagerJobInput {
  name: string;
  namespace: string;
  owner: OwnerRef;
  diskName: string;
  snapshotName?: string;
  claimName: string;
  sourceClaimName?: string;
  headersSecretName?: string;
  request: ImagerRequest;
  settings: PodSettings;
}

/** The Job object for one imager run. */
export function buildImagerJob(input: ImagerJobInput): V1Job {
  const labels: Record<string, string> = {
    [LABEL_MANAGED_BY]: MANAGED_BY,
    [LABEL_DISK]: labelValue(input.diskName),
    [LABEL_OPERATION]: input.request.operation,
    [LABEL_OWNER_KIND]: input.owner.kind,
    ...(input.snapshotName ? { [LABEL_SNAPSHOT]: labelValue(input.snapshotName) } : {}),
  };
  const volumes: V1Volume[] = [{ name: 'data', persistentVolumeClaim: { claimName: input.claimName } }];
  const mounts: V1VolumeMount[] = [{ name: 'data', mountPath: DATA_MOUNT_PATH }];
  if (input.sourceClaimName) {
    volumes.push({
      name: 'source',
      persistentVolumeClaim: { claimName: input.sourceClaimName, readOnly: true },
    });
    mounts.push({ name: 'source', mountPath: SOURCE_MOUNT_PATH, readOnly: true });
  }
  if (input.headersSecretName) {
    volumes.push({ name: 'http-headers', secret: { secretName: input.headersSecretName } });
    mounts.push({ name: 'http-headers', mountPath: HEADERS_MOUNT_PATH, readOnly: true });
  }
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name: input.name,
      namespace: input.namespace,
      labels,
      ownerReferences: [{ ...input.owner, controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      // A transient failure (node lost, I/O error) is retried once; a permanent one fails at once.
      backoffLimit: 1,
      activeDeadlineSeconds: input.settings.activeDeadlineSeconds,
      podFailurePolicy: {
        rules: [
          {
            action: 'FailJob',
            onExitCodes: {
              containerName: 'imager',
              operator: 'In',
              values: [IMAGER_PERMANENT_FAILURE_EXIT_CODE],
            },
          },
        ],
      },
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: 'Never',
          automountServiceAccountToken: false,
          // The agent image runs as 65532 (config/manager); fsGroup makes the PVC writable for it.
          securityContext: { fsGroup: 65532 },
          volumes,
          containers: [
            {
              name: 'imager',
              image: input.settings.agentImage,
              imagePullPolicy: input.settings.imagePullPolicy,
              command: ['vdisk-agent'],
              args: ['imager', ...imagerArgs(input.request)],
              volumeMounts: mounts,
              terminationMessagePolicy: 'FallbackToLogsOnError',
              resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
              securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
            },
          ],
        },
      },
    },
  };
}
