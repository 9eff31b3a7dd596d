// `npm run cluster:up` / `npm run cluster:down`: a local Kubernetes control plane + vdisk local node for
// development, running detached in the background. Writes .local/kubeconfig, .local/bin/kubectl, .local/bin/helm,
// .local/cluster.pid (the supervisor) and .local/cluster.json (component PIDs); logs in .local/cluster.log.
// State (etcd data, PV folders) survives down/up; `down --purge` wipes it.
// Usage: node scripts/cluster.ts up | down [--purge] | status   (`serve` is the detached supervisor itself)
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { binaryPath, ensureAssets } from '../test/controlplane/assets.ts';
import { startControlPlane } from '../test/controlplane/harness.ts';
import { startLocalNode } from '../test/controlplane/local-node.ts';
import { isAlive, processGroupMembers, stopProcessGroup } from '../test/controlplane/processes.ts';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Everything the cluster writes lives here: `<repo>/.local`, or $VDISK_LOCAL_DIR (tests use a temp folder). */
const LOCAL = resolve(process.env.VDISK_LOCAL_DIR || join(REPO, '.local'));
const PATHS = {
  pid: join(LOCAL, 'cluster.pid'),
  state: join(LOCAL, 'cluster.json'),
  ready: join(LOCAL, 'cluster.ready'),
  log: join(LOCAL, 'cluster.log'),
  kubeconfig: join(LOCAL, 'kubeconfig'),
  kubectl: join(LOCAL, 'bin', 'kubectl'),
  helm: join(LOCAL, 'bin', 'helm'),
  controlPlaneDir: join(LOCAL, 'controlplane'),
};

/** Written by the supervisor: what `down` must stop if the supervisor itself is gone. */
interface ClusterState {
  supervisorPid: number;
  componentPids: number[];
  serverUrl: string;
  assetsDir: string;
}

async function readPid(): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(PATHS.pid, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 && (await isAlive(pid)) ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function readState(): Promise<ClusterState | undefined> {
  try {
    return JSON.parse(await readFile(PATHS.state, 'utf8')) as ClusterState;
  } catch {
    return undefined;
  }
}

function usage(): string {
  return [
    `kubeconfig: ${PATHS.kubeconfig}`,
    `try:        ${PATHS.kubectl} --kubeconfig ${PATHS.kubeconfig} get nodes,storageclasses`,
    `            export KUBECONFIG=${PATHS.kubeconfig} PATH=${dirname(PATHS.kubectl)}:$PATH`,
    `logs:       ${PATHS.log}, ${PATHS.controlPlaneDir}/logs/, pods: ${LOCAL}/node/pods/<uid>/`,
    `helm:       ${PATHS.helm} install vdisk charts/vdisk-operator (with KUBECONFIG exported as above)`,
    'stop:       npm run cluster:down   (keeps state; npm run cluster:down -- --purge wipes it)',
  ].join('\n');
}

/** Puts helm (built once from the Go module proxy by test/chart/build-helm.sh) at .local/bin/helm. */
async function linkHelm(): Promise<void> {
  const built = spawnSync('bash', [join(REPO, 'test', 'chart', 'build-helm.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const helm = built.stdout.trim().split('\n').pop();
  if (built.status !== 0 || !helm) {
    console.warn('helm is not available (see above); the cluster starts without .local/bin/helm');
    return;
  }
  await mkdir(dirname(PATHS.helm), { recursive: true });
  await rm(PATHS.helm, { force: true });
  await symlink(helm, PATHS.helm);
}

async function up(): Promise<number> {
  const running = await readPid();
  if (running !== undefined) {
    console.log(`cluster already running (supervisor pid ${running})\n${usage()}`);
    return 0;
  }
  const startedMs = Date.now();
  const assets = await ensureAssets();
  if (!assets.ok) {
    console.error(`cannot start the cluster: ${assets.skipReason}`);
    return assets.exitCode === 3 ? 3 : 1;
  }
  await mkdir(LOCAL, { recursive: true });
  await linkHelm();
  await rm(PATHS.ready, { force: true });
  const logFd = openSync(PATHS.log, 'w');
  const supervisor = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve'], {
    cwd: REPO,
    detached: true,
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, KUBEBUILDER_ASSETS: assets.dir },
  });
  closeSync(logFd);
  supervisor.unref();
  await writeFile(PATHS.pid, `${supervisor.pid}\n`);
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    if (existsSync(PATHS.ready)) {
      console.log(
        `cluster up in ${Date.now() - startedMs} ms (supervisor pid ${supervisor.pid})\n${usage()}`,
      );
      return 0;
    }
    if (supervisor.pid === undefined || !(await isAlive(supervisor.pid))) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const log = await readFile(PATHS.log, 'utf8').catch(() => '');
  console.error(`cluster did not come up; last log lines:\n${log.split('\n').slice(-30).join('\n')}`);
  await down(false);
  return 1;
}

async function serve(): Promise<void> {
  // .local/controlplane keeps certificates and etcd data, so objects and PVs survive down/up (down --purge wipes).
  const plane = await startControlPlane({
    dir: PATHS.controlPlaneDir,
    assetsDir: process.env.KUBEBUILDER_ASSETS,
  });
  await copyFile(plane.kubeconfigPath, PATHS.kubeconfig);
  await mkdir(dirname(PATHS.kubectl), { recursive: true });
  await rm(PATHS.kubectl, { force: true });
  await symlink(binaryPath(plane.assetsDir, 'kubectl'), PATHS.kubectl);
  const node = await startLocalNode(plane.kubeConfig, {
    podKubeconfigPath: PATHS.kubeconfig,
    stateDir: join(LOCAL, 'node'),
    volumesDir: join(LOCAL, 'volumes'),
    // The integration tier's probe, so `VDISK_TEST_KUBECONFIG=.local/kubeconfig` runs it against this cluster.
    extraEntrypoints: { 'vdisk-probe': 'test/controlplane/fixtures/probe.ts' },
  }).catch(async (err) => {
    await plane.stop();
    throw err;
  });
  const state: ClusterState = {
    supervisorPid: process.pid,
    componentPids: plane.processes.map((p) => p.pid),
    serverUrl: plane.serverUrl,
    assetsDir: plane.assetsDir,
  };
  await writeFile(PATHS.state, `${JSON.stringify(state, null, 2)}\n`);
  await writeFile(PATHS.ready, `${plane.serverUrl}\n`);
  console.error(`cluster ready at ${plane.serverUrl}`);
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`stopping on ${signal}`);
    await node.stop().catch((err) => console.error(`local node stop failed: ${err}`));
    await plane.stop().catch((err) => console.error(`control plane stop failed: ${err}`));
    await rm(PATHS.ready, { force: true });
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

async function down(purge: boolean): Promise<number> {
  const pid = await readPid();
  const state = await readState();
  if (pid !== undefined) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && (await isAlive(pid))) await new Promise((r) => setTimeout(r, 100));
    if (await isAlive(pid)) await stopProcessGroup(pid, 0);
  }
  // If the supervisor died without cleaning up, stop its components (only if they are still ours).
  for (const componentPid of state?.componentPids ?? []) {
    const cmdline = await readFile(`/proc/${componentPid}/cmdline`, 'utf8').catch(() => '');
    if (state !== undefined && cmdline.startsWith(state.assetsDir))
      await stopProcessGroup(componentPid, 5_000);
  }
  const left = (await Promise.all((state?.componentPids ?? []).map(processGroupMembers))).flat();
  await rm(PATHS.pid, { force: true });
  await rm(PATHS.ready, { force: true });
  await rm(PATHS.state, { force: true });
  if (left.length > 0) {
    console.error(`processes still running: ${left.join(', ')}`);
    return 1;
  }
  console.log(pid === undefined && state === undefined ? 'cluster was not running' : 'cluster stopped');
  if (purge) {
    for (const folder of [PATHS.controlPlaneDir, join(LOCAL, 'volumes'), join(LOCAL, 'node')]) {
      await rm(folder, { recursive: true, force: true });
    }
    console.log('removed the cluster state (.local/controlplane, .local/volumes, .local/node)');
  }
  return 0;
}

async function status(): Promise<number> {
  const pid = await readPid();
  if (pid === undefined) {
    console.log('cluster not running (npm run cluster:up)');
    return 1;
  }
  console.log(
    `cluster running (supervisor pid ${pid}, ${(await readState())?.serverUrl ?? '?'})\n${usage()}`,
  );
  return 0;
}

const command = process.argv[2];
switch (command) {
  case 'up':
    process.exitCode = await up();
    break;
  case 'down':
    process.exitCode = await down(process.argv.includes('--purge'));
    break;
  case 'status':
    process.exitCode = await status();
    break;
  case 'serve':
    await serve();
    break;
  default:
    console.error('usage: node scripts/cluster.ts up | down [--purge] | status');
    process.exitCode = 2;
}
