// The local StorageClass: a PVC (no class named: vdisk-local is the default) is provisioned as a
// hostPath PV whose folder exists, kube-controller-manager binds the two, and deleting the PVC
// releases the PV, which the provisioner deletes together with its folder.
import { existsSync } from 'node:fs';
import { CoreV1Api, PatchStrategy, StorageV1Api, setHeaderOptions } from '@kubernetes/client-node';
import { beforeAll, expect, it } from 'vitest';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';

describeWithControlPlane('local StorageClass', () => {
  let core: CoreV1Api;
  let namespace: string;

  beforeAll(async () => {
    const kubeConfig = controlPlane().kubeConfig();
    core = kubeConfig.makeApiClient(CoreV1Api);
    namespace = await createTestNamespace(kubeConfig, 'pvc');
  });

  it('is the default StorageClass, served by the local provisioner', async () => {
    const storage = controlPlane().kubeConfig().makeApiClient(StorageV1Api);
    const storageClass = await storage.readStorageClass({ name: controlPlane().storageClassName });
    expect(storageClass.provisioner).toBe(controlPlane().provisionerName);
    expect(storageClass.metadata?.annotations?.['storageclass.kubernetes.io/is-default-class']).toBe('true');
  });

  it('expands a bound PVC: PV and PVC capacity follow a larger request', async () => {
    await core.createNamespacedPersistentVolumeClaim({
      namespace,
      body: {
        metadata: { name: 'growing' },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
      },
    });
    const bound = await eventually(
      'PVC Bound',
      () => core.readNamespacedPersistentVolumeClaim({ namespace, name: 'growing' }),
      (c) => c.status?.phase === 'Bound',
    );
    expect(bound.status?.capacity?.storage).toBe('16Mi');
    await core.patchNamespacedPersistentVolumeClaim(
      { namespace, name: 'growing', body: { spec: { resources: { requests: { storage: '1Gi' } } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    const grown = await eventually(
      'PVC capacity 1Gi',
      () => core.readNamespacedPersistentVolumeClaim({ namespace, name: 'growing' }),
      (c) => c.status?.capacity?.storage === '1Gi',
    );
    const volume = await core.readPersistentVolume({ name: grown.spec?.volumeName ?? '' });
    expect(volume.spec?.capacity?.storage).toBe('1Gi');
  });

  it('binds a PVC to a hostPath PV whose folder exists, and removes both when the PVC is deleted', async () => {
    await core.createNamespacedPersistentVolumeClaim({
      namespace,
      body: {
        metadata: { name: 'disk' },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '64Mi' } } },
      },
    });
    const claim = await eventually(
      'PVC Bound',
      () => core.readNamespacedPersistentVolumeClaim({ namespace, name: 'disk' }),
      (c) => c.status?.phase === 'Bound',
    );
    expect(claim.spec?.storageClassName).toBe(controlPlane().storageClassName);
    const volumeName = claim.spec?.volumeName ?? '';
    const volume = await core.readPersistentVolume({ name: volumeName });
    expect(volume.status?.phase).toBe('Bound');
    expect(volume.spec?.capacity?.storage).toBe('64Mi');
    expect(volume.spec?.claimRef?.uid).toBe(claim.metadata?.uid);
    const folder = volume.spec?.hostPath?.path ?? '';
    expect(folder.startsWith(`${controlPlane().volumesDir}/`)).toBe(true);
    expect(existsSync(folder)).toBe(true);

    await core.deleteNamespacedPersistentVolumeClaim({ namespace, name: 'disk' });
    await eventually(
      'PV deleted',
      () => core.listPersistentVolume({ fieldSelector: `metadata.name=${volumeName}` }),
      (list) => list.items.length === 0,
    );
    expect(existsSync(folder)).toBe(false);
  });
});
