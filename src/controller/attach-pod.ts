// The attach pod: `vdisk-agent attach` pinned to spec.attach.nodeName, serving the image from the PVC
// over NBD to the node's nbd-client, mapping partitions and mounting them (DESIGN.md "Pods the
// controller launches"). Privileged only for /dev, /run/vdisk and the mount points (Bidirectional).
// The name carries a hash of the attach settings, so a changed spec.attach replaces the pod.

import type { V1Pod, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import { DATA_MOUNT_PATH } from '../api/imager.ts';
import type { VirtualDisk } from '../api/virtual-disk.ts';
import type { OwnerRef, PodSettings } from './imager-job.ts';
import { boundedName, LABEL_DISK, LABEL_MANAGED_BY, labelValue, MANAGED_BY, shortHash } from './naming.ts';

export const LABEL_ROLE = 'vdisk.dev/role';
export const ATTACH_ROLE = 'attach';
/** Time the agent gets on deletion to unmount, unmap, disconnect and flush. */
export const ATTACH_GRACE_SECONDS = 120;

/** The attach pod's name for the disk's current spec.attach and image. */
export function attachPodName(disk: VirtualDisk): string {
  const settings = JSON.stringify({
    attach: disk.spec.attach,
    layout: disk.spec.layout,
    image: disk.status?.image?.path,
  });
  return boundedName(['vd', disk.metadata.name, 'attach', shortHash(settings)], 63);
}

/** The attach pod for a disk whose spec.attach is set and whose image exists. */
export function buildAttachPod(
  disk: VirtualDisk,
  claimName: string,
  owner: OwnerRef,
  settings: PodSettings,
): V1Pod {
  const attach = disk.spec.attach!;
  const image = disk.status!.image!;
  const namespace = disk.metadata.namespace ?? 'default';
  const args = [
    'attach',
    `--image=${DATA_MOUNT_PATH}/${image.path}`,
    `--format=${image.format}`,
    `--id=${namespace}.${disk.metadata.name}`.slice(0, 128),
    '--termination-log=/dev/termination-log',
  ];
  if (attach.readOnly) args.push('--read-only');
  if (disk.spec.layout) args.push(`--layout=${JSON.stringify(disk.spec.layout)}`);
  const volumes: V1Volume[] = [
    { name: 'data', persistentVolumeClaim: { claimName, readOnly: attach.readOnly } },
    { name: 'dev', hostPath: { path: '/dev' } },
    { name: 'run', hostPath: { path: '/run/vdisk', type: 'DirectoryOrCreate' } },
  ];
  const mounts: V1VolumeMount[] = [
    { name: 'data', mountPath: DATA_MOUNT_PATH, readOnly: attach.readOnly },
    { name: 'dev', mountPath: '/dev' },
    { name: 'run', mountPath: '/run/vdisk' },
  ];
  for (const [index, mount] of (attach.mounts ?? []).entries()) {
    args.push(`--mount=${mount.partition}:${mount.path}${mount.options ? `:${mount.options}` : ''}`);
    volumes.push({ name: `mount-${index}`, hostPath: { path: mount.path, type: 'DirectoryOrCreate' } });
    mounts.push({ name: `mount-${index}`, mountPath: mount.path, mountPropagation: 'Bidirectional' });
  }
  const labels = {
    [LABEL_MANAGED_BY]: MANAGED_BY,
    [LABEL_DISK]: labelValue(disk.metadata.name),
    [LABEL_ROLE]: ATTACH_ROLE,
  };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: attachPodName(disk),
      namespace,
      labels,
      ownerReferences: [{ ...owner, controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      nodeName: attach.nodeName,
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: ATTACH_GRACE_SECONDS,
      volumes,
      containers: [
        {
          name: 'attach',
          image: settings.agentImage,
          imagePullPolicy: settings.imagePullPolicy,
          command: ['vdisk-agent'],
          args,
          volumeMounts: mounts,
          terminationMessagePolicy: 'FallbackToLogsOnError',
          securityContext: { privileged: true },
          resources: { requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '512Mi' } },
        },
      ],
    },
  };
}
