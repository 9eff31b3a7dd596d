// A hundred blank VirtualDisks applied at once on the tier's control plane all reach Ready, each with
// its own PVC and image, and leave no imager Job or pod behind. (bench/controller.ts measures the
// same at 1, 100 and 1,000 disks with timings and API request counts; this only asserts the outcome.)
import { BatchV1Api, CoreV1Api, type CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { API_GROUP, API_VERSION } from '../../../src/api/common.ts';
import type { Manager } from '../../../src/controller/manager.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';
import { createDisk, customApi, installCrds, type Obj, startController } from './helpers.ts';

const DISKS = 100;
/** Creates in flight at once: the apiserver and the local node, not the test, should be the limit. */
const CREATE_CONCURRENCY = 20;

describeWithControlPlane('100 VirtualDisks at once', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let namespace: string;
  let manager: Manager;

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    custom = customApi(kubeConfig);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vdscale');
    manager = await startController(kubeConfig, namespace);
  });

  afterAll(async () => {
    await manager?.stop();
  });

  it(`brings ${DISKS} blank disks applied at once to Ready`, { timeout: 600_000 }, async () => {
    const names = Array.from({ length: DISKS }, (_, index) => `many-${String(index).padStart(3, '0')}`);
    const startedMs = Date.now();
    for (let index = 0; index < names.length; index += CREATE_CONCURRENCY) {
      await Promise.all(
        names
          .slice(index, index + CREATE_CONCURRENCY)
          .map((name) =>
            createDisk(custom, namespace, name, { size: '8Mi', format: 'qcow2', source: { blank: {} } }),
          ),
      );
    }
    const list = async () =>
      (
        (await custom.listNamespacedCustomObject({
          group: API_GROUP,
          version: API_VERSION,
          namespace,
          plural: 'virtualdisks',
        })) as { items: Obj[] }
      ).items;
    const disks = await eventually(
      `${DISKS} disks Ready`,
      list,
      (items) => items.filter((disk) => disk.status?.phase === 'Ready').length === DISKS,
      540_000,
    );
    console.info(`${DISKS} disks Ready in ${((Date.now() - startedMs) / 1000).toFixed(1)} s`);
    expect(disks.map((disk) => disk.metadata?.name).sort()).toEqual(names);
    for (const disk of disks) {
      expect(disk.status?.image, disk.metadata?.name).toMatchObject({
        format: 'qcow2',
        virtualSize: 8 * 2 ** 20,
      });
      expect(disk.status?.progress).toBe('100%');
    }
    const claims = await kubeConfig
      .makeApiClient(CoreV1Api)
      .listNamespacedPersistentVolumeClaim({ namespace });
    expect(claims.items.map((claim) => claim.metadata?.name).sort()).toEqual(
      names.map((name) => `vdisk-${name}`),
    );
    // Each disk had exactly one imager Job, and every one was removed once its result was recorded.
    const batch = kubeConfig.makeApiClient(BatchV1Api);
    await eventually(
      'imager Jobs removed',
      () => batch.listNamespacedJob({ namespace }),
      (jobs) => jobs.items.length === 0,
      120_000,
    );
    const jobsCreated = (await manager.metrics.jobsCreatedTotal.get()).values
      .filter((value) => value.labels.operation === 'create')
      .reduce((sum, value) => sum + value.value, 0);
    expect(jobsCreated).toBe(DISKS);
  });
});
