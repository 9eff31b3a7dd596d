// Pure translation of a pod's containers into local processes for the local node: which images it
// can run (repository name `vdisk`, command[0] `vdisk` or `vdisk-agent`), the argv, the environment
// (literal values, downward API fieldRef, $(VAR) expansion as the kubelet does) and the path map.
import { resolve } from 'node:path';
import type { V1Container, V1EnvVar, V1Pod } from '@kubernetes/client-node';

/** Entry points the local node can run, by the container's command[0]: scripts relative to the repo root. */
export type Entrypoints = Readonly<Record<string, string>>;

/** The entry points of vdisk's image. */
export const ENTRYPOINTS: Entrypoints = {
  vdisk: 'bin/vdisk.mjs',
  'vdisk-agent': 'bin/vdisk-agent.mjs',
};

/** Repository name of an image reference: `ghcr.io/x/vdisk:0.1.0` -> `vdisk`, `vdisk@sha256:..` -> `vdisk`. */
export function imageRepositoryName(image: string): string {
  const withoutDigest = image.split('@')[0] ?? '';
  const lastSegment = withoutDigest.split('/').at(-1) ?? '';
  return lastSegment.split(':')[0] ?? '';
}

/** Why a container cannot run on the local node, or undefined when it can. */
export function unsupportedReason(
  container: V1Container,
  entrypoints: Entrypoints = ENTRYPOINTS,
): string | undefined {
  const image = container.image ?? '';
  if (imageRepositoryName(image) !== 'vdisk') {
    return `container ${container.name}: image ${JSON.stringify(image)} is not a vdisk image; the local node only runs images whose repository name is "vdisk"`;
  }
  const entry = container.command?.[0];
  if (entry === undefined || entrypoints[entry] === undefined) {
    return `container ${container.name}: command[0] must be one of ${Object.keys(entrypoints).join(', ')} (got ${JSON.stringify(entry ?? null)})`;
  }
  return undefined;
}

/** Expands $(NAME) references like the kubelet: known names are replaced, $$ escapes, unknown ones stay. */
export function expandVariables(text: string, env: Readonly<Record<string, string>>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (match, name: string | undefined) => {
    if (name === undefined) return '$';
    return env[name] ?? match;
  });
}

/** Reads a downward-API fieldPath of the pod (metadata.name, metadata.labels['k'], status.podIP, ...). */
export function podField(pod: V1Pod, fieldPath: string, hostIp: string): string | undefined {
  const labelMatch = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(fieldPath);
  if (labelMatch !== null) {
    const map = labelMatch[1] === 'labels' ? pod.metadata?.labels : pod.metadata?.annotations;
    return map?.[labelMatch[2] ?? ''] ?? '';
  }
  switch (fieldPath) {
    case 'metadata.name':
      return pod.metadata?.name;
    case 'metadata.namespace':
      return pod.metadata?.namespace;
    case 'metadata.uid':
      return pod.metadata?.uid;
    case 'spec.nodeName':
      return pod.spec?.nodeName;
    case 'spec.serviceAccountName':
      return pod.spec?.serviceAccountName ?? 'default';
    case 'status.podIP':
    case 'status.hostIP':
      return hostIp;
    default:
      return undefined;
  }
}

/** Reads the data of a ConfigMap or Secret (Secret values decoded to text); undefined when absent. */
export type DataLookup = (
  kind: 'ConfigMap' | 'Secret',
  name: string,
) => Promise<Record<string, string> | undefined>;

/** Builds the container's environment (in order, later entries may reference earlier ones via $(NAME)). */
export async function containerEnv(
  pod: V1Pod,
  container: V1Container,
  lookup: DataLookup,
  hostIp: string,
): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const source of container.envFrom ?? []) {
    const kind = source.configMapRef !== undefined ? 'ConfigMap' : 'Secret';
    const ref = source.configMapRef ?? source.secretRef;
    if (ref?.name === undefined) continue;
    const data = await lookup(kind, ref.name);
    for (const [key, value] of Object.entries(data ?? {})) {
      env[`${source.prefix ?? ''}${key}`] = value;
    }
  }
  for (const variable of container.env ?? ([] as V1EnvVar[])) {
    const from = variable.valueFrom;
    let value: string | undefined;
    if (from === undefined) value = expandVariables(variable.value ?? '', env);
    else if (from.fieldRef !== undefined) value = podField(pod, from.fieldRef.fieldPath, hostIp);
    else if (from.configMapKeyRef !== undefined) {
      value = (await lookup('ConfigMap', from.configMapKeyRef.name ?? ''))?.[from.configMapKeyRef.key];
    } else if (from.secretKeyRef !== undefined) {
      value = (await lookup('Secret', from.secretKeyRef.name ?? ''))?.[from.secretKeyRef.key];
    }
    if (value !== undefined) env[variable.name] = value;
  }
  return env;
}

/** The host argv for a supported container: [node, <repo>/bin/<entry>.mjs, ...command[1..], ...args]. */
export function containerArgv(
  container: V1Container,
  env: Readonly<Record<string, string>>,
  repoRoot: string,
  nodeBinary: string,
  entrypoints: Entrypoints = ENTRYPOINTS,
): string[] {
  const [entry = '', ...rest] = container.command ?? [];
  const script = entrypoints[entry];
  if (script === undefined) throw new Error(`unsupported entry point ${entry}`);
  const args = [...rest, ...(container.args ?? [])].map((arg) => expandVariables(arg, env));
  return [nodeBinary, resolve(repoRoot, script), ...args];
}
