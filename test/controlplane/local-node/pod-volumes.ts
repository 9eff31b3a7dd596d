// Maps a pod's volumes to host folders for the local node: PVC -> its PV's folder, emptyDir and
// projected/downwardAPI -> a folder of the pod, hostPath -> the path itself, configMap/secret -> files.
// The result is the VDISK_PATH_MAP of each container (src/agent/runtime/paths.ts).
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import type { V1Container, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { DataLookup } from './pod-spec.ts';

/** Finds the host folder of a bound PVC; undefined while unbound. */
export type ClaimFolderLookup = (namespace: string, claimName: string) => Promise<string | undefined>;

/** Thrown while a volume cannot be prepared yet (PVC not bound, ConfigMap missing): retry later. */
export class VolumeNotReadyError extends Error {
  override readonly name = 'VolumeNotReadyError';
}

/** A relative path inside a volume that cannot climb out of it. */
function safeRelative(path: string): string {
  const cleaned = normalize(`/${path}`).slice(1);
  if (cleaned.startsWith('..')) throw new Error(`path ${JSON.stringify(path)} escapes its volume`);
  return cleaned;
}

async function writeDataFiles(
  folder: string,
  data: Record<string, string>,
  items: ReadonlyArray<{ key: string; path: string }> | undefined,
): Promise<void> {
  await mkdir(folder, { recursive: true });
  const entries = items === undefined ? Object.keys(data).map((key) => ({ key, path: key })) : items;
  for (const { key, path } of entries) {
    const value = data[key];
    if (value === undefined) continue;
    const file = join(folder, safeRelative(path));
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, value);
  }
}

/** Prepares one volume; returns its host folder. Throws VolumeNotReadyError to retry later. */
async function volumeFolder(
  pod: V1Pod,
  volume: V1Volume,
  podDir: string,
  claimFolder: ClaimFolderLookup,
  lookup: DataLookup,
): Promise<string> {
  const namespace = pod.metadata?.namespace ?? 'default';
  const ownFolder = join(podDir, 'volumes', safeRelative(volume.name));
  if (volume.persistentVolumeClaim !== undefined) {
    const claimName = volume.persistentVolumeClaim.claimName;
    const folder = await claimFolder(namespace, claimName);
    if (folder === undefined)
      throw new VolumeNotReadyError(`PersistentVolumeClaim ${namespace}/${claimName} is not bound yet`);
    return folder;
  }
  if (volume.hostPath !== undefined) {
    if (volume.hostPath.type === 'DirectoryOrCreate') await mkdir(volume.hostPath.path, { recursive: true });
    return volume.hostPath.path;
  }
  if (volume.configMap !== undefined || volume.secret !== undefined) {
    const kind = volume.configMap !== undefined ? 'ConfigMap' : 'Secret';
    const name = volume.configMap?.name ?? volume.secret?.secretName ?? '';
    const data = await lookup(kind, name);
    const isOptional = volume.configMap?.optional ?? volume.secret?.optional ?? false;
    if (data === undefined && !isOptional)
      throw new VolumeNotReadyError(`${kind} ${namespace}/${name} not found`);
    await writeDataFiles(ownFolder, data ?? {}, volume.configMap?.items ?? volume.secret?.items);
    return ownFolder;
  }
  // emptyDir, projected, downwardAPI, ephemeral and anything else: a folder private to the pod.
  await mkdir(ownFolder, { recursive: true });
  return ownFolder;
}

/** Prepares every volume of the pod once; returns volume name -> host folder. */
export async function preparePodVolumes(
  pod: V1Pod,
  podDir: string,
  claimFolder: ClaimFolderLookup,
  lookup: DataLookup,
): Promise<Map<string, string>> {
  const folders = new Map<string, string>();
  for (const volume of pod.spec?.volumes ?? []) {
    folders.set(volume.name, await volumeFolder(pod, volume, podDir, claimFolder, lookup));
  }
  return folders;
}

/**
 * The container's VDISK_PATH_MAP: each volumeMount (with subPath) and the termination message path.
 * Throws when a mount names a volume the pod does not have.
 */
export async function containerPathMap(
  container: V1Container,
  volumeFolders: ReadonlyMap<string, string>,
  terminationLogPath: string,
): Promise<Record<string, string>> {
  const map: Record<string, string> = {};
  for (const mount of container.volumeMounts ?? []) {
    const folder = volumeFolders.get(mount.name);
    if (folder === undefined)
      throw new Error(`container ${container.name}: volumeMount ${mount.name} has no volume`);
    const subPath = mount.subPath ?? '';
    const hostFolder = subPath === '' ? folder : join(folder, safeRelative(subPath));
    if (subPath !== '') await mkdir(hostFolder, { recursive: true });
    map[mount.mountPath] = hostFolder;
  }
  map[container.terminationMessagePath ?? '/dev/termination-log'] = terminationLogPath;
  return map;
}
