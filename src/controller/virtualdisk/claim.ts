// The PVC a VirtualDisk's image lives on: built from spec.storage and the measured size, owned by
// the disk (controller reference), labelled for the controller's informer. Pure.

import type { V1PersistentVolumeClaim } from '@kubernetes/client-node';
import { formatQuantityBytes, parseQuantityBytes } from '../../api/quantity.ts';
import type { VirtualDisk } from '../../api/virtual-disk.ts';
import { claimNameFor, LABEL_DISK, LABEL_MANAGED_BY, labelValue, MANAGED_BY } from '../naming.ts';
import { ownerOf } from './plan.ts';

/** The storage a PVC requests, in bytes. */
export function claimRequestBytes(claim: V1PersistentVolumeClaim): number | undefined {
  const request = claim.spec?.resources?.requests?.storage;
  return request === undefined ? undefined : parseQuantityBytes(String(request));
}

/** The PVC a disk's image lives on. */
export function buildClaim(disk: VirtualDisk, requestBytes: number): V1PersistentVolumeClaim {
  const storage = disk.spec.storage;
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: {
      name: claimNameFor(disk.metadata.name),
      namespace: disk.metadata.namespace,
      labels: { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_DISK]: labelValue(disk.metadata.name) },
      ownerReferences: [{ ...ownerOf(disk), controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      accessModes: storage?.accessModes ? [...storage.accessModes] : ['ReadWriteOnce'],
      volumeMode: 'Filesystem',
      resources: { requests: { storage: formatQuantityBytes(requestBytes) } },
      ...(storage?.storageClassName ? { storageClassName: storage.storageClassName } : {}),
    },
  };
}
