// The local node's storage: a StorageClass (default class) whose PVCs this provisioner satisfies with
// hostPath PersistentVolumes backed by folders under `volumesDir`, following the external-provisioner
// protocol (PV with claimRef; kube-controller-manager's PV controller binds; Released + Delete -> removed),
// and the external-resizer part of expansion (a larger request updates PV and PVC capacity; folders have no size).
import { mkdir, rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import {
  CoreV1Api,
  type Informer,
  type KubeConfig,
  makeInformer,
  type ObjectCache,
  StorageV1Api,
  type V1PersistentVolume,
  type V1PersistentVolumeClaim,
  type V1StorageClass,
} from '@kubernetes/client-node';
import { httpStatus, JSON_PATCH, type LocalNodeLog, MERGE_PATCH, restartOnError } from './api.ts';

const QUANTITY_SUFFIX_BYTES: Readonly<Record<string, number>> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A resource.Quantity of storage in bytes (approximate above 2^53); NaN when it does not parse. */
export function quantityBytes(quantity: string | undefined): number {
  const match = /^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$/.exec(quantity?.trim() ?? '');
  const factor = match === null ? undefined : QUANTITY_SUFFIX_BYTES[match[2] ?? ''];
  return match === null || factor === undefined ? Number.NaN : Number(match[1]) * factor;
}

const PROVISIONED_BY = 'pv.kubernetes.io/provisioned-by';
const DEFAULT_CLASS = 'storageclass.kubernetes.io/is-default-class';

/** Settings of {@link LocalVolumes}. */
export interface LocalVolumesOptions {
  nodeName: string;
  storageClassName: string;
  provisionerName: string;
  /** Host folder holding one sub-folder per PersistentVolume. */
  volumesDir: string;
  /** Mark the StorageClass as the cluster default. */
  isDefaultClass: boolean;
}

/** Provisions and deletes hostPath PVs for PVCs of the local StorageClass. */
export class LocalVolumes {
  readonly #core: CoreV1Api;
  readonly #storage: StorageV1Api;
  readonly #options: LocalVolumesOptions;
  readonly #log: LocalNodeLog;
  readonly #claims: Informer<V1PersistentVolumeClaim> & ObjectCache<V1PersistentVolumeClaim>;
  readonly #volumes: Informer<V1PersistentVolume> & ObjectCache<V1PersistentVolume>;
  readonly #inFlight = new Set<string>();
  readonly #classes = new Map<string, V1StorageClass | null>();
  #stopped = false;

  constructor(kubeConfig: KubeConfig, options: LocalVolumesOptions, log: LocalNodeLog) {
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#storage = kubeConfig.makeApiClient(StorageV1Api);
    this.#options = options;
    this.#log = log;
    this.#claims = makeInformer(kubeConfig, '/api/v1/persistentvolumeclaims', () =>
      this.#core.listPersistentVolumeClaimForAllNamespaces(),
    );
    this.#volumes = makeInformer(kubeConfig, '/api/v1/persistentvolumes', () =>
      this.#core.listPersistentVolume(),
    );
    for (const verb of ['add', 'update'] as const) {
      this.#claims.on(verb, (claim) => {
        void this.#provision(claim);
        void this.#expand(claim);
      });
      this.#volumes.on(verb, (volume) => void this.#reclaim(volume));
    }
    restartOnError(this.#claims, () => this.#stopped, log, 'persistentvolumeclaims');
    restartOnError(this.#volumes, () => this.#stopped, log, 'persistentvolumes');
  }

  /** Creates the StorageClass (if missing) and starts watching PVCs and PVs. */
  async start(): Promise<void> {
    await mkdir(this.#options.volumesDir, { recursive: true });
    try {
      await this.#storage.createStorageClass({
        body: {
          metadata: {
            name: this.#options.storageClassName,
            annotations: this.#options.isDefaultClass ? { [DEFAULT_CLASS]: 'true' } : {},
          },
          provisioner: this.#options.provisionerName,
          reclaimPolicy: 'Delete',
          volumeBindingMode: 'Immediate',
          allowVolumeExpansion: true,
        },
      });
    } catch (err) {
      if (httpStatus(err) !== 409) throw err;
    }
    await Promise.all([this.#claims.start(), this.#volumes.start()]);
  }

  /** Stops the watches; volumes and their folders stay. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all([this.#claims.stop(), this.#volumes.stop()]);
  }

  /** Host folder of a PV this provisioner made. */
  folderOf(persistentVolumeName: string): string {
    return join(this.#options.volumesDir, persistentVolumeName);
  }

  async #isOurClass(className: string | undefined): Promise<boolean> {
    if (className === undefined || className === '') return false;
    if (!this.#classes.has(className)) {
      try {
        this.#classes.set(className, await this.#storage.readStorageClass({ name: className }));
      } catch (err) {
        if (httpStatus(err) !== 404) throw err;
        return false; // not cached: the class may be created later
      }
    }
    return this.#classes.get(className)?.provisioner === this.#options.provisionerName;
  }

  async #provision(claim: V1PersistentVolumeClaim): Promise<void> {
    const { namespace = '', name = '', uid = '', deletionTimestamp } = claim.metadata ?? {};
    if (claim.spec?.volumeName || claim.status?.phase !== 'Pending' || deletionTimestamp !== undefined)
      return;
    const volumeName = `pvc-${uid}`;
    if (this.#inFlight.has(volumeName) || this.#volumes.get(volumeName) !== undefined) return;
    this.#inFlight.add(volumeName);
    try {
      if (!(await this.#isOurClass(claim.spec?.storageClassName))) return;
      const folder = this.folderOf(volumeName);
      await mkdir(folder, { recursive: true });
      await this.#core.createPersistentVolume({
        body: {
          metadata: { name: volumeName, annotations: { [PROVISIONED_BY]: this.#options.provisionerName } },
          spec: {
            capacity: { storage: claim.spec?.resources?.requests?.storage ?? '1Gi' },
            accessModes: claim.spec?.accessModes ?? ['ReadWriteOnce'],
            volumeMode: claim.spec?.volumeMode ?? 'Filesystem',
            storageClassName: claim.spec?.storageClassName,
            persistentVolumeReclaimPolicy: 'Delete',
            claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace, name, uid },
            hostPath: { path: folder, type: 'DirectoryOrCreate' },
            nodeAffinity: {
              required: {
                nodeSelectorTerms: [
                  {
                    matchExpressions: [
                      { key: 'kubernetes.io/hostname', operator: 'In', values: [this.#options.nodeName] },
                    ],
                  },
                ],
              },
            },
          },
        },
      });
      this.#log.info('Provisioned PersistentVolume', { pvc: `${namespace}/${name}`, pv: volumeName, folder });
    } catch (err) {
      if (httpStatus(err) !== 409)
        this.#log.warn('Provisioning failed', { pvc: `${namespace}/${name}`, err: String(err) });
    } finally {
      this.#inFlight.delete(volumeName);
    }
  }

  /** Grows PV and PVC capacity to a larger request on a bound claim of ours (hostPath folders have no size). */
  async #expand(claim: V1PersistentVolumeClaim): Promise<void> {
    const { namespace = '', name = '' } = claim.metadata ?? {};
    const volumeName = claim.spec?.volumeName ?? '';
    const requested = claim.spec?.resources?.requests?.storage;
    const current = claim.status?.capacity?.storage;
    if (claim.status?.phase !== 'Bound' || volumeName === '' || requested === undefined) return;
    if (!(quantityBytes(requested) > quantityBytes(current))) return;
    const volume = this.#volumes.get(volumeName);
    if (volume?.metadata?.annotations?.[PROVISIONED_BY] !== this.#options.provisionerName) return;
    const key = `expand/${namespace}/${name}/${requested}`;
    if (this.#inFlight.has(key)) return;
    this.#inFlight.add(key);
    try {
      await this.#core.patchPersistentVolume(
        { name: volumeName, body: { spec: { capacity: { storage: requested } } } },
        MERGE_PATCH,
      );
      await this.#core.patchNamespacedPersistentVolumeClaimStatus(
        {
          name,
          namespace,
          body: [
            { op: 'add', path: '/status/capacity', value: { ...claim.status?.capacity, storage: requested } },
            { op: 'add', path: '/status/conditions', value: [] },
          ],
        },
        JSON_PATCH,
      );
      this.#log.info('Expanded PersistentVolume', {
        pvc: `${namespace}/${name}`,
        pv: volumeName,
        storage: requested,
      });
    } catch (err) {
      this.#log.warn('Volume expansion failed', { pvc: `${namespace}/${name}`, err: String(err) });
    } finally {
      this.#inFlight.delete(key);
    }
  }

  async #reclaim(volume: V1PersistentVolume): Promise<void> {
    const name = volume.metadata?.name ?? '';
    if (volume.metadata?.annotations?.[PROVISIONED_BY] !== this.#options.provisionerName) return;
    if (volume.status?.phase !== 'Released' || volume.spec?.persistentVolumeReclaimPolicy !== 'Delete')
      return;
    if (this.#inFlight.has(name)) return;
    this.#inFlight.add(name);
    try {
      const folder = volume.spec?.hostPath?.path ?? '';
      // Never remove anything outside our own volumes folder, whatever the PV says.
      const inside = relative(this.#options.volumesDir, folder);
      if (folder !== '' && inside !== '' && !inside.startsWith('..') && !inside.includes('/')) {
        await rm(folder, { recursive: true, force: true });
      }
      await this.#core.deletePersistentVolume({ name });
      this.#log.info('Deleted PersistentVolume', { pv: name, folder });
    } catch (err) {
      if (httpStatus(err) !== 404) this.#log.warn('Volume deletion failed', { pv: name, err: String(err) });
    } finally {
      this.#inFlight.delete(name);
    }
  }

  /** The host folder backing a bound PVC, or undefined while it is not bound to a hostPath/local PV. */
  async claimFolder(namespace: string, claimName: string): Promise<string | undefined> {
    let claim: V1PersistentVolumeClaim;
    try {
      claim = await this.#core.readNamespacedPersistentVolumeClaim({ namespace, name: claimName });
    } catch (err) {
      if (httpStatus(err) === 404) return undefined;
      throw err;
    }
    const volumeName = claim.spec?.volumeName;
    if (!volumeName || claim.status?.phase !== 'Bound') return undefined;
    const volume = await this.#core.readPersistentVolume({ name: volumeName });
    return volume.spec?.hostPath?.path ?? volume.spec?.local?.path;
  }
}
