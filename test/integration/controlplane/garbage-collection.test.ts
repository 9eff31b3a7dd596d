// kube-controller-manager's garbage collector on the test control plane: dependents named by
// ownerReferences are deleted with their owner (background and foreground propagation).
import { CoreV1Api, type V1OwnerReference } from '@kubernetes/client-node';
import { beforeAll, expect, it } from 'vitest';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';

describeWithControlPlane('garbage collection', () => {
  let core: CoreV1Api;
  let namespace: string;

  beforeAll(async () => {
    core = controlPlane().kubeConfig().makeApiClient(CoreV1Api);
    namespace = await createTestNamespace(controlPlane().kubeConfig(), 'gc');
  });

  async function ownerWithDependents(ownerName: string): Promise<string[]> {
    const owner = await core.createNamespacedConfigMap({
      namespace,
      body: { metadata: { name: ownerName } },
    });
    const ref: V1OwnerReference = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      name: ownerName,
      uid: owner.metadata?.uid ?? '',
      blockOwnerDeletion: true,
    };
    const names = [`${ownerName}-a`, `${ownerName}-b`];
    for (const name of names) {
      await core.createNamespacedSecret({ namespace, body: { metadata: { name, ownerReferences: [ref] } } });
    }
    return names;
  }

  const secretsLeft = async (names: string[]) =>
    (await core.listNamespacedSecret({ namespace })).items.filter((s) =>
      names.includes(s.metadata?.name ?? ''),
    );

  it('deletes dependents after their owner is deleted (background)', async () => {
    const dependents = await ownerWithDependents('owner-bg');
    expect(await secretsLeft(dependents)).toHaveLength(2);
    await core.deleteNamespacedConfigMap({ namespace, name: 'owner-bg' });
    await eventually(
      'dependents collected',
      () => secretsLeft(dependents),
      (left) => left.length === 0,
    );
  });

  it('holds the owner until its dependents are gone (foreground)', async () => {
    const dependents = await ownerWithDependents('owner-fg');
    await core.deleteNamespacedConfigMap({
      namespace,
      name: 'owner-fg',
      body: { propagationPolicy: 'Foreground' },
    });
    await eventually(
      'dependents collected',
      () => secretsLeft(dependents),
      (left) => left.length === 0,
    );
    await eventually(
      'owner deleted',
      () => core.listNamespacedConfigMap({ namespace, fieldSelector: 'metadata.name=owner-fg' }),
      (list) => list.items.length === 0,
    );
  });
});
