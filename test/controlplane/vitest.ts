// What integration tests import to use the tier's shared control plane (started by global-setup.ts):
// controlPlane() with the kubeconfig path and local-node names, describeWithControlPlane() that skips
// loudly when there is none, and small helpers (a fresh namespace, polling).
import { randomBytes } from 'node:crypto';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { describe, inject } from 'vitest';
import { waitFor } from './net.ts';

/** Where the tier's control plane is (or why there is none). Serializable: passed by vitest provide/inject. */
export type ControlPlaneInfo =
  | {
      available: true;
      /** Admin kubeconfig (JSON, embedded certs), also usable with kubectl --kubeconfig. */
      kubeconfigPath: string;
      kubectlPath: string;
      serverUrl: string;
      /** The local node's name (`vdisk-local`). */
      nodeName: string;
      /** The local, default StorageClass (`vdisk-local`). */
      storageClassName: string;
      provisionerName: string;
      /** Host folder holding one folder per provisioned PV. */
      volumesDir: string;
      /** Host folder with `pods/<uid>/<container>.log`. */
      stateDir: string;
      repoRoot: string;
      /** How long globalSetup took to start it, in ms. */
      startMs: number;
    }
  | { available: false; skipReason: string };

declare module 'vitest' {
  export interface ProvidedContext {
    vdiskControlPlane: ControlPlaneInfo;
  }
}

/** The tier's control plane, with `kubeConfig()` returning a fresh admin KubeConfig. Throws when absent. */
export function controlPlane(): Extract<ControlPlaneInfo, { available: true }> & {
  kubeConfig(): KubeConfig;
} {
  const info = inject('vdiskControlPlane');
  if (info === undefined || !info.available) {
    throw new Error(
      `no control plane: ${info?.skipReason ?? 'test/controlplane/global-setup.ts did not run'}`,
    );
  }
  return {
    ...info,
    kubeConfig() {
      const kubeConfig = new KubeConfig();
      kubeConfig.loadFromFile(info.kubeconfigPath);
      return kubeConfig;
    },
  };
}

/** True when the tier has a control plane. */
export function hasControlPlane(): boolean {
  return inject('vdiskControlPlane')?.available === true;
}

/** describe() that is skipped, with a loud warning naming the reason, when there is no control plane. */
export function describeWithControlPlane(name: string, body: () => void): void {
  const info = inject('vdiskControlPlane');
  const available = info?.available === true;
  if (!available) {
    const reason = info === undefined ? 'globalSetup did not run' : info.available ? '' : info.skipReason;
    console.warn(`SKIP ${name}: no Kubernetes control plane (${reason})`);
  }
  describe.skipIf(!available)(name, body);
}

/** Creates a namespace `<prefix>-<random>` and waits for its `default` ServiceAccount; returns its name. */
export async function createTestNamespace(kubeConfig: KubeConfig, prefix: string): Promise<string> {
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await core.createNamespace({ body: { metadata: { name, labels: { 'vdisk.dev/test': 'true' } } } });
  await waitFor(
    `ServiceAccount ${name}/default`,
    async () => {
      try {
        await core.readNamespacedServiceAccount({ namespace: name, name: 'default' });
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 30_000, intervalMs: 100 },
  );
  return name;
}

/** Polls `read` until `predicate` holds for its value; returns that value. */
export async function eventually<T>(
  what: string,
  read: () => Promise<T>,
  predicate: (value: T) => boolean,
  timeoutMs = 60_000,
): Promise<T> {
  let last: T | undefined;
  await waitFor(
    what,
    async () => {
      try {
        last = await read();
        return predicate(last) || JSON.stringify(last).slice(0, 500);
      } catch (err) {
        return String(err);
      }
    },
    { timeoutMs, intervalMs: 100 },
  );
  return last as T;
}

export { waitFor };
