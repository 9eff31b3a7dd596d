// Shared pieces of the operator's integration tests: install the generated CRDs (crds/, the files that
// ship), run the controller in-process against the tier's real apiserver, wait for status, and find
// an image file on the local node's hostPath PV.
import { execFileSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { parse } from 'yaml';
import { API_GROUP, API_VERSION } from '../../../src/api/common.ts';
import { createLogger } from '../../../src/controller/logger.ts';
import { Manager } from '../../../src/controller/manager.ts';
import { createMetrics } from '../../../src/controller/metrics.ts';
import { eventually } from '../../controlplane/vitest.ts';

const REPO = join(import.meta.dirname, '..', '..', '..');

/**
 * Applies crds/ with kubectl (server-side apply) and waits until each CRD is Established. kubectl, not
 * the typed client: client-node's serializer drops `x-kubernetes-*` keys of raw YAML objects.
 */
export async function installCrds(
  kubeConfig: KubeConfig,
  kubectlPath: string,
  kubeconfigPath: string,
): Promise<void> {
  const folder = join(REPO, 'crds');
  execFileSync(
    kubectlPath,
    ['--kubeconfig', kubeconfigPath, 'apply', '--server-side', '--force-conflicts', '-f', folder],
    { stdio: 'pipe' },
  );
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  for (const file of (await readdir(folder)).filter((name) => name.endsWith('.yaml'))) {
    const crd = parse(await readFile(join(folder, file), 'utf8')) as { metadata: { name: string } };
    const name = crd.metadata.name;
    await eventually(
      `CRD ${name} Established`,
      () => extensions.readCustomResourceDefinition({ name }),
      (read) =>
        read.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') === true,
      30_000,
    );
  }
}

/** A controller for one namespace, quiet unless VDISK_TEST_LOG=1. */
export async function startController(kubeConfig: KubeConfig, namespace: string): Promise<Manager> {
  const log = createLogger('vdisk-controller-test');
  log.level = process.env.VDISK_TEST_LOG === '1' ? 'debug' : 'silent';
  const manager = new Manager({
    kubeConfig,
    log,
    namespace,
    httpPort: 0,
    httpHost: '127.0.0.1',
    metrics: createMetrics(false),
    resyncPeriodMs: 10_000,
  });
  await manager.start();
  return manager;
}

export type Obj = KubernetesObject & { spec?: Record<string, unknown>; status?: Record<string, unknown> };

export function customApi(kubeConfig: KubeConfig): CustomObjectsApi {
  return kubeConfig.makeApiClient(CustomObjectsApi);
}

/** Creates a vdisk.dev object of `kind` (its `plural`) named `name` with `spec`. */
async function createCustom(
  custom: CustomObjectsApi,
  kind: 'VirtualDisk' | 'DiskSnapshot',
  plural: 'virtualdisks' | 'disksnapshots',
  namespace: string,
  name: string,
  spec: Record<string, unknown>,
): Promise<Obj> {
  return (await custom.createNamespacedCustomObject({
    group: API_GROUP,
    version: API_VERSION,
    namespace,
    plural,
    body: { apiVersion: `${API_GROUP}/${API_VERSION}`, kind, metadata: { name }, spec },
  })) as Obj;
}

export function createDisk(
  custom: CustomObjectsApi,
  namespace: string,
  name: string,
  spec: Record<string, unknown>,
): Promise<Obj> {
  return createCustom(custom, 'VirtualDisk', 'virtualdisks', namespace, name, spec);
}

export function createSnapshot(
  custom: CustomObjectsApi,
  namespace: string,
  name: string,
  spec: Record<string, unknown>,
): Promise<Obj> {
  return createCustom(custom, 'DiskSnapshot', 'disksnapshots', namespace, name, spec);
}

export async function readObject(
  custom: CustomObjectsApi,
  namespace: string,
  plural: string,
  name: string,
): Promise<Obj> {
  return (await custom.getNamespacedCustomObject({
    group: API_GROUP,
    version: API_VERSION,
    namespace,
    plural,
    name,
  })) as Obj;
}

/** Deletes a vdisk.dev object and waits (as `what`) until the API no longer has it: its finalizer ran. */
export async function deleteAndWaitGone(
  custom: CustomObjectsApi,
  namespace: string,
  plural: string,
  name: string,
  what: string,
): Promise<void> {
  await custom.deleteNamespacedCustomObject({
    group: API_GROUP,
    version: API_VERSION,
    namespace,
    plural,
    name,
  });
  await eventually(
    what,
    () =>
      readObject(custom, namespace, plural, name).then(
        () => 'present',
        (err: unknown) => ((err as { code?: number }).code === 404 ? 'gone' : 'error'),
      ),
    (state) => state === 'gone',
  );
}

/** Waits until the object's status.phase is `phase` (or Failed, which ends the wait early with its message). */
export async function waitForPhase(
  custom: CustomObjectsApi,
  namespace: string,
  plural: string,
  name: string,
  phase: string,
  timeoutMs = 90_000,
): Promise<Obj> {
  let last: Obj | undefined;
  const object = await eventually(
    `${plural}/${name} phase ${phase}`,
    async () => {
      last = await readObject(custom, namespace, plural, name);
      return last;
    },
    (read) => read.status?.phase === phase || (phase !== 'Failed' && read.status?.phase === 'Failed'),
    timeoutMs,
  ).catch((err: unknown) => {
    throw new Error(`${(err as Error).message.slice(0, 120)}; last status: ${JSON.stringify(last?.status)}`);
  });
  if (object.status?.phase !== phase)
    throw new Error(`${plural}/${name} is ${object.status?.phase}: ${JSON.stringify(object.status)}`);
  return object;
}

/** Host path of the folder backing a bound PVC (the local node's hostPath PV). */
export async function claimFolder(
  kubeConfig: KubeConfig,
  namespace: string,
  claimName: string,
): Promise<string> {
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const claim = await core.readNamespacedPersistentVolumeClaim({ name: claimName, namespace });
  const volume = await core.readPersistentVolume({ name: claim.spec!.volumeName! });
  return volume.spec?.hostPath?.path ?? volume.spec!.local!.path;
}

/** A recognisable image body: each 4 KiB block starts with its index plus `seed`. */
export function pattern(sizeBytes: number, seed: number): Buffer {
  const buffer = Buffer.alloc(sizeBytes);
  for (let offset = 0; offset < sizeBytes; offset += 4096) buffer.writeUInt32LE(offset / 4096 + seed, offset);
  return buffer;
}
