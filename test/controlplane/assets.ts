// Where the control-plane binaries live (the KUBEBUILDER_ASSETS convention of controller-runtime's envtest)
// and how to get them: reuse a folder that has them all, else run build.sh (Go module proxy build).
// build.sh exit code 3 means "cannot build here" and turns into a loud skip, never a silent pass.
import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Kubernetes version the wrapper module in test/controlplane/k8s pins. */
export const K8S_VERSION = 'v1.34.4';
/** The binaries a control plane needs, by their KUBEBUILDER_ASSETS names. */
export const CONTROL_PLANE_BINARIES = [
  'etcd',
  'kube-apiserver',
  'kube-controller-manager',
  'kube-scheduler',
  'kubectl',
] as const;
export type ControlPlaneBinary = (typeof CONTROL_PLANE_BINARIES)[number];

const HERE = dirname(fileURLToPath(import.meta.url));
/** Path of the idempotent build script. */
export const BUILD_SCRIPT = join(HERE, 'build.sh');

/** The folder binaries are looked up in: $KUBEBUILDER_ASSETS, else the per-version cache folder. */
export function assetsDir(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.KUBEBUILDER_ASSETS;
  if (explicit !== undefined && explicit !== '') return explicit;
  const cacheHome = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(cacheHome, 'vdisk', 'controlplane', K8S_VERSION);
}

/** Absolute path of one binary: TEST_ASSET_<NAME> wins (envtest's override), else `<dir>/<name>`. */
export function binaryPath(
  dir: string,
  name: ControlPlaneBinary,
  env: NodeJS.ProcessEnv = process.env,
): string {
  const override = env[`TEST_ASSET_${name.toUpperCase().replaceAll('-', '_')}`];
  return override !== undefined && override !== '' ? override : join(dir, name);
}

/** True when every binary exists and is executable in `dir`. */
export async function hasAllBinaries(dir: string): Promise<boolean> {
  for (const name of CONTROL_PLANE_BINARIES) {
    try {
      await access(binaryPath(dir, name), constants.X_OK);
    } catch {
      return false;
    }
  }
  return true;
}

/** Outcome of {@link ensureAssets}: a folder with every binary, or why there is none. */
export type AssetsResult =
  | { ok: true; dir: string; builtMs: number }
  | { ok: false; skipReason: string; exitCode: number | null };

/**
 * Returns a folder holding every control-plane binary, building them with build.sh when missing
 * (cold: 15-30 min on 2 cores; warm: instant). Never throws for a machine that cannot build:
 * returns `{ ok: false, skipReason }` so callers skip loudly. Build output goes to stderr.
 */
export async function ensureAssets(options: { quiet?: boolean } = {}): Promise<AssetsResult> {
  const dir = assetsDir();
  if (await hasAllBinaries(dir)) return { ok: true, dir, builtMs: 0 };
  const startedMs = Date.now();
  const result = await new Promise<{ code: number | null; stdout: string; stderrTail: string }>((resolve) => {
    const child = spawn('bash', [BUILD_SCRIPT], {
      env: { ...process.env, KUBEBUILDER_ASSETS: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderrTail = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (options.quiet !== true) process.stderr.write(chunk);
      stderrTail = (stderrTail + chunk.toString()).slice(-4000);
    });
    child.on('error', (err) => resolve({ code: null, stdout, stderrTail: String(err) }));
    child.on('close', (code) => resolve({ code, stdout, stderrTail }));
  });
  if (result.code === 0 && (await hasAllBinaries(dir))) {
    return { ok: true, dir, builtMs: Date.now() - startedMs };
  }
  const reason =
    result.code === 3
      ? `build.sh cannot build the control plane on this machine: ${result.stderrTail.trim().split('\n').at(-1) ?? ''}`
      : `build.sh failed with exit code ${result.code}: ${result.stderrTail.trim().split('\n').slice(-5).join(' | ')}`;
  return { ok: false, skipReason: reason, exitCode: result.code };
}
