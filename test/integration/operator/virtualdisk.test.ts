// The operator against the tier's real kube-apiserver, controller-manager (Job controller, garbage
// collector) and local node (imager pods run as processes): generated CRDs validate, blank disks
// become Ready with images qemu-img reads, deletion cleans up per deletionPolicy.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BatchV1Api, CoreV1Api, type CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { API_GROUP, API_VERSION } from '../../../src/api/common.ts';
import { MERGE_PATCH } from '../../../src/controller/kube.ts';
import type { Manager } from '../../../src/controller/manager.ts';
import { DISK_FORMATS, type DiskFormat, engineFormatName } from '../../../src/api/virtual-disk.ts';
import { imageFileName } from '../../../src/controller/naming.ts';
import { formatRegistry } from '../../../src/engine/formats/registry.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';
import {
  claimFolder,
  deleteAndWaitGone,
  createDisk,
  customApi,
  installCrds,
  readObject,
  startController,
  waitForPhase,
} from './helpers.ts';

const MIB = 1024 * 1024;

function qemuInfo(path: string): { 'virtual-size': number; format: string } {
  return JSON.parse(execFileSync('qemu-img', ['info', '--output=json', path], { encoding: 'utf8' }));
}

function apiMessage(err: unknown): string {
  const body = (err as { body?: unknown }).body;
  const text = typeof body === 'string' ? body : JSON.stringify(body ?? '');
  try {
    return (JSON.parse(text) as { message?: string }).message ?? text;
  } catch {
    return text;
  }
}

describeWithControlPlane('VirtualDisk on a real control plane', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let namespace: string;
  let manager: Manager;

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    custom = customApi(kubeConfig);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vd');
    manager = await startController(kubeConfig, namespace);
  });

  afterAll(async () => {
    await manager?.stop();
  });

  it('rejects invalid VirtualDisks with readable messages', async () => {
    const attempts: Array<[Record<string, unknown>, RegExp]> = [
      [
        { size: '1Gi', source: { blank: {}, http: { url: 'http://x/y' } } },
        /exactly one of blank, http, virtualDisk or snapshot/,
      ],
      [{ size: '1Gi', source: {} }, /exactly one of blank, http, virtualDisk or snapshot/],
      [{ size: 'lots', source: { blank: {} } }, /spec.size/],
      [{ size: '0', source: { blank: {} } }, /size must be a positive quantity/],
      [{ size: '1Gi', format: 'iso', source: { blank: {} } }, /spec.format: Unsupported value: "iso"/],
    ];
    for (const [index, [spec, message]] of attempts.entries()) {
      const error = await createDisk(custom, namespace, `bad-${index}`, spec).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error, JSON.stringify(spec)).toBeDefined();
      expect(apiMessage(error)).toMatch(message);
    }
  });

  it('refuses shrinking and changing format or source of an existing disk', async () => {
    await createDisk(custom, namespace, 'immutable', { size: '2Mi', format: 'raw', source: { blank: {} } });
    const patch = async (spec: Record<string, unknown>) =>
      custom
        .patchNamespacedCustomObject(
          {
            group: API_GROUP,
            version: API_VERSION,
            namespace,
            plural: 'virtualdisks',
            name: 'immutable',
            body: { spec },
          },
          MERGE_PATCH,
        )
        .then(
          () => 'accepted',
          (err: unknown) => apiMessage(err),
        );
    expect(await patch({ size: '1Mi' })).toMatch(/size may only grow/);
    expect(await patch({ format: 'qcow2' })).toMatch(/format is immutable/);
    expect(await patch({ source: { http: { url: 'http://x/y' } } })).toMatch(/source is immutable/);
    expect(await patch({ size: '3Mi' })).toBe('accepted');
  });

  it('makes a blank disk Ready in every writable format, with an image qemu-img reads', async () => {
    // spec.format -> qemu-img's name for it (vhd is qemu's vpc).
    const formats: Array<[DiskFormat, string]> = DISK_FORMATS.map((format) => [
      format,
      engineFormatName(format),
    ]);
    await Promise.all(
      formats.map(([format]) =>
        createDisk(custom, namespace, `blank-${format}`, { size: '16Mi', format, source: { blank: {} } }),
      ),
    );
    for (const [format, qemuFormat] of formats) {
      const name = `blank-${format}`;
      const fileName = imageFileName(format);
      const disk = await waitForPhase(custom, namespace, 'virtualdisks', name, 'Ready');
      const status = disk.status as {
        claimName: string;
        image: Record<string, unknown>;
        conditions: Array<Record<string, unknown>>;
      };
      // qemu rounds vpc sizes up to its CHS geometry; every other format holds exactly 16 MiB.
      const exact = qemuFormat !== 'vpc';
      expect(status.image, format).toMatchObject({ path: fileName, format: qemuFormat });
      const virtualSize = status.image.virtualSize as number;
      if (exact) expect(virtualSize, format).toBe(16 * MIB);
      else expect(virtualSize).toBeGreaterThanOrEqual(16 * MIB);
      expect(status.conditions.find((c) => c.type === 'Ready')).toMatchObject({
        status: 'True',
        reason: 'ImageReady',
      });
      expect(status.conditions.find((c) => c.type === 'Progressing')).toMatchObject({ status: 'False' });
      const folder = await claimFolder(kubeConfig, namespace, status.claimName);
      const info = qemuInfo(join(folder, fileName));
      expect(info.format, format).toBe(qemuFormat);
      expect(info['virtual-size'], format).toBe(virtualSize);
      if (['qcow2', 'vmdk', 'vdi', 'vhdx', 'qed'].includes(qemuFormat))
        execFileSync('qemu-img', ['check', '-f', qemuFormat, join(folder, fileName)]);
    }
    // Every imager Job is removed once its result is recorded.
    const batch = kubeConfig.makeApiClient(BatchV1Api);
    await eventually(
      'imager Jobs removed',
      () => batch.listNamespacedJob({ namespace, labelSelector: 'vdisk.dev/operation=create' }),
      (list) => list.items.filter((job) => job.metadata?.name?.includes('blank-')).length === 0,
    );
  });

  it.each([
    ['raw', 'disk.img'],
    ['qcow2', 'disk.qcow2'],
  ])('grows a %s image when spec.size grows', async (format, fileName) => {
    const driver = formatRegistry.find((candidate) => candidate.name === format);
    if (driver?.capabilities.resize === 'none') {
      console.warn(`SKIP growing ${format}: the engine's ${format} driver cannot resize yet`);
      return;
    }
    const name = `grow-${format}`;
    await createDisk(custom, namespace, name, { size: '4Mi', format, source: { blank: {} } });
    await waitForPhase(custom, namespace, 'virtualdisks', name, 'Ready');
    await custom.patchNamespacedCustomObject(
      {
        group: API_GROUP,
        version: API_VERSION,
        namespace,
        plural: 'virtualdisks',
        name,
        body: { spec: { size: '12Mi' } },
      },
      MERGE_PATCH,
    );
    const disk = await eventually(
      'disk grown',
      () => readObject(custom, namespace, 'virtualdisks', name),
      (read) =>
        (read.status as { image?: { virtualSize?: number } })?.image?.virtualSize === 12 * MIB &&
        read.status?.phase === 'Ready',
    );
    const folder = await claimFolder(kubeConfig, namespace, (disk.status as { claimName: string }).claimName);
    expect(qemuInfo(join(folder, fileName))['virtual-size']).toBe(12 * MIB);
  });

  it('deletes Jobs, pods and the PVC with the disk (Delete), keeps the PVC with Retain', async () => {
    const core = kubeConfig.makeApiClient(CoreV1Api);
    const batch = kubeConfig.makeApiClient(BatchV1Api);
    for (const policy of ['Delete', 'Retain']) {
      const name = `del-${policy.toLowerCase()}`;
      await createDisk(custom, namespace, name, {
        size: '2Mi',
        format: 'raw',
        source: { blank: {} },
        deletionPolicy: policy,
      });
      const disk = await waitForPhase(custom, namespace, 'virtualdisks', name, 'Ready');
      const claimName = (disk.status as { claimName: string }).claimName;
      await deleteAndWaitGone(custom, namespace, 'virtualdisks', name, `VirtualDisk ${name} gone`);
      await eventually(
        'no Jobs or pods left',
        async () => {
          const jobs = await batch.listNamespacedJob({ namespace, labelSelector: `vdisk.dev/disk=${name}` });
          const pods = await core.listNamespacedPod({ namespace, labelSelector: `vdisk.dev/disk=${name}` });
          return jobs.items.length + pods.items.length;
        },
        (count) => count === 0,
      );
      const claimState = () =>
        core.readNamespacedPersistentVolumeClaim({ name: claimName, namespace }).then(
          (claim) =>
            claim.metadata?.deletionTimestamp
              ? 'deleting'
              : claim.metadata?.ownerReferences?.length
                ? 'owned'
                : 'released',
          (err: unknown) => ((err as { code?: number }).code === 404 ? 'gone' : 'error'),
        );
      if (policy === 'Delete') await eventually('PVC deleted', claimState, (state) => state === 'gone');
      else expect(await claimState()).toBe('released');
    }
  });

  it('serves /metrics and /readyz', async () => {
    const base = `http://127.0.0.1:${manager.httpPort}`;
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/vdisk_reconcile_total\{kind="VirtualDisk",result="success"\} \d+/);
    expect(metrics).toMatch(/vdisk_imager_jobs_created_total\{operation="create"\} \d+/);
    expect(existsSync(join(controlPlane().repoRoot, 'crds'))).toBe(true);
  });
});
