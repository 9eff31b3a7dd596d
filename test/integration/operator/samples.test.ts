// What ships is what the API server accepts: every manifest in config/samples passes server-side
// dry-run validation against the generated CRDs, and a DiskSnapshot's spec cannot change.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import type { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { beforeAll, expect, it } from 'vitest';
import { API_GROUP, API_VERSION } from '../../../src/api/common.ts';
import { MERGE_PATCH } from '../../../src/controller/kube.ts';
import { controlPlane, createTestNamespace, describeWithControlPlane } from '../../controlplane/vitest.ts';
import { createSnapshot, customApi, installCrds } from './helpers.ts';

describeWithControlPlane('shipped manifests on a real apiserver', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let namespace: string;

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    custom = customApi(kubeConfig);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vdsamples');
  });

  it('accepts every sample in config/samples (server-side dry run)', () => {
    const plane = controlPlane();
    const output = execFileSync(
      plane.kubectlPath,
      [
        '--kubeconfig',
        plane.kubeconfigPath,
        'apply',
        '--server-side',
        '--dry-run=server',
        '-n',
        namespace,
        '-k',
        join(plane.repoRoot, 'config', 'samples'),
      ],
      { encoding: 'utf8', stdio: 'pipe' },
    );
    expect(output.trim().split('\n')).toHaveLength(6);
    expect(output).toMatch(/virtualdisk.vdisk.dev\/demo-disk serverside-applied \(server dry run\)/);
    expect(output).toMatch(/disksnapshot.vdisk.dev\/demo-snap serverside-applied \(server dry run\)/);
  });

  it('builds the config/default kustomization (CRDs, RBAC, Deployment) and the apiserver accepts it', () => {
    const plane = controlPlane();
    const kubectl = (...args: string[]) =>
      execFileSync(plane.kubectlPath, ['--kubeconfig', plane.kubeconfigPath, ...args], {
        encoding: 'utf8',
        stdio: 'pipe',
      });
    // A dry run creates nothing, so the namespaced objects need their namespace to exist for real.
    execFileSync('sh', [
      '-c',
      `"${plane.kubectlPath}" --kubeconfig "${plane.kubeconfigPath}" create namespace vdisk-system 2>/dev/null || true`,
    ]);
    const output = kubectl(
      'apply',
      '--server-side',
      '--force-conflicts',
      '--dry-run=server',
      '-k',
      join(plane.repoRoot, 'config', 'default'),
    );
    expect(output).toMatch(/customresourcedefinition.apiextensions.k8s.io\/virtualdisks.vdisk.dev/);
    expect(output).toMatch(/deployment.apps\/vdisk-controller/);
  });

  it('refuses to change a DiskSnapshot spec', async () => {
    await createSnapshot(custom, namespace, 'frozen', { virtualDiskName: 'some-disk' });
    const message = await custom
      .patchNamespacedCustomObject(
        {
          group: API_GROUP,
          version: API_VERSION,
          namespace,
          plural: 'disksnapshots',
          name: 'frozen',
          body: { spec: { virtualDiskName: 'other-disk' } },
        },
        MERGE_PATCH,
      )
      .then(
        () => 'accepted',
        (err: unknown) => String((err as { body?: unknown }).body),
      );
    expect(message).toMatch(/spec is immutable/);
  });
});
