// `npm run demo`: a local Kubernetes control plane (test/controlplane: etcd, kube-apiserver,
// controller-manager, scheduler built from source on first use, ~5 min on 2 cores) plus the local node
// that runs vdisk pods as processes; installs the CRDs, runs the controller in this process, applies
// config/samples/virtualdisk.yaml and disksnapshot.yaml, waits for Ready, shows kubectl get and
// `vdisk info` of the image the imager made, then tears everything down.

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { API_GROUP, API_VERSION } from '../src/api/common.ts';
import { createLogger } from '../src/controller/logger.ts';
import { Manager } from '../src/controller/manager.ts';
import { binaryPath, ensureAssets } from '../test/controlplane/assets.ts';
import { startControlPlane } from '../test/controlplane/harness.ts';
import { REPO_ROOT, startLocalNode } from '../test/controlplane/local-node.ts';

const say = (text: string) => process.stdout.write(`\n== ${text}\n`);
const NAMESPACE = 'default';

async function waitFor<T>(
  what: string,
  read: () => Promise<T>,
  done: (value: T) => boolean,
  timeoutMs = 180_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    try {
      last = await read();
      if (done(last)) return last;
    } catch {
      // not there yet
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)?.slice(0, 2000)}`);
}

say('Control-plane binaries (built from the Go module proxy on first use: several minutes)');
const assets = await ensureAssets();
if (!assets.ok) {
  process.stderr.write(`demo: cannot run a control plane here: ${assets.skipReason}\n`);
  process.exit(3);
}
const kubectl = binaryPath(assets.dir, 'kubectl');
const work = await mkdtemp(join(tmpdir(), 'vdisk-demo-'));
say('Starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler');
const plane = await startControlPlane({ assetsDir: assets.dir });
let node: Awaited<ReturnType<typeof startLocalNode>> | undefined;
let manager: Manager | undefined;
const run = (...args: string[]) =>
  execFileSync(kubectl, ['--kubeconfig', plane.kubeconfigPath, ...args], {
    encoding: 'utf8',
    cwd: REPO_ROOT,
  });
let exitCode = 0;
try {
  say('Starting the local node (runs vdisk pods as local processes)');
  node = await startLocalNode(plane.kubeConfig, {
    stateDir: join(work, 'node'),
    volumesDir: join(work, 'volumes'),
    quiet: true,
  });

  say('kubectl apply --server-side -f crds/');
  process.stdout.write(run('apply', '--server-side', '-f', 'crds/'));
  run(
    'wait',
    '--for=condition=Established',
    '--timeout=60s',
    'crd/virtualdisks.vdisk.dev',
    'crd/disksnapshots.vdisk.dev',
  );
  await waitFor(
    'the default ServiceAccount',
    () =>
      plane.kubeConfig
        .makeApiClient(CoreV1Api)
        .readNamespacedServiceAccount({ name: 'default', namespace: NAMESPACE }),
    () => true,
  );

  say('Starting the controller in this process');
  const log = createLogger('vdisk-controller');
  log.level = process.env.VDISK_LOG_LEVEL ?? 'warn';
  manager = new Manager({ kubeConfig: plane.kubeConfig, log, httpPort: 0, httpHost: '127.0.0.1' });
  await manager.start();

  const custom = plane.kubeConfig.makeApiClient(CustomObjectsApi);
  const read = (plural: string, name: string) =>
    custom.getNamespacedCustomObject({
      group: API_GROUP,
      version: API_VERSION,
      namespace: NAMESPACE,
      plural,
      name,
    }) as Promise<{
      status?: { phase?: string; claimName?: string; image?: { path: string }; message?: string };
    }>;
  say('kubectl apply -f config/samples/virtualdisk.yaml');
  process.stdout.write(run('apply', '-f', 'config/samples/virtualdisk.yaml'));
  const disk = await waitFor(
    'VirtualDisk demo-disk Ready',
    () => read('virtualdisks', 'demo-disk'),
    (d) => d.status?.phase === 'Ready' || d.status?.phase === 'Failed',
  );
  say('kubectl apply -f config/samples/disksnapshot.yaml');
  process.stdout.write(run('apply', '-f', 'config/samples/disksnapshot.yaml'));
  const snapshot = await waitFor(
    'DiskSnapshot demo-snap Ready',
    () => read('disksnapshots', 'demo-snap'),
    (s) => s.status?.phase === 'Ready' || s.status?.phase === 'Failed',
  );
  if (disk.status?.phase !== 'Ready' || snapshot.status?.phase !== 'Ready') exitCode = 1;

  say('kubectl get vd,vdsnap');
  process.stdout.write(run('get', 'vd,vdsnap', '-n', NAMESPACE));
  say('kubectl describe vd demo-disk (conditions and events)');
  process.stdout.write(
    run('describe', 'vd', 'demo-disk', '-n', NAMESPACE)
      .split('\n')
      .filter((line) => !/^\s*(Manager|Operation|API Version|Fields Type|Time|f:)/.test(line))
      .join('\n'),
  );

  const claimName = disk.status?.claimName ?? 'vdisk-demo-disk';
  const claim = await plane.kubeConfig
    .makeApiClient(CoreV1Api)
    .readNamespacedPersistentVolumeClaim({ name: claimName, namespace: NAMESPACE });
  const volume = await plane.kubeConfig
    .makeApiClient(CoreV1Api)
    .readPersistentVolume({ name: claim.spec?.volumeName ?? '' });
  const folder = volume.spec?.hostPath?.path ?? volume.spec?.local?.path ?? '';
  const imagePath = join(folder, disk.status?.image?.path ?? 'disk.qcow2');
  say(`vdisk info --backing-chain ${imagePath}`);
  process.stdout.write(
    execFileSync(
      process.execPath,
      [join(REPO_ROOT, 'bin', 'vdisk.mjs'), 'info', '--backing-chain', imagePath],
      { encoding: 'utf8' },
    ),
  );
} catch (err) {
  exitCode = 1;
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
} finally {
  say('Tearing down');
  await manager?.stop();
  await node?.stop();
  await plane.stop();
  await rm(work, { recursive: true, force: true });
}
process.exit(exitCode);
