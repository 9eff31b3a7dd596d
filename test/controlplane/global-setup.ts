// vitest globalSetup of the integration tier: builds or reuses the control-plane binaries, starts ONE
// control plane + local node for the whole tier, provides where it is (inject('vdiskControlPlane')),
// and stops it at the end. Without binaries it provides a skip reason and the tier skips loudly.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestProject } from 'vitest/node';
import { binaryPath, ensureAssets } from './assets.ts';
import { startControlPlane } from './harness.ts';
import { REPO_ROOT, startLocalNode } from './local-node.ts';
import { forgetTempFolder, processGroupMembers, removeTempFolderOnCrash } from './processes.ts';
import type { ControlPlaneInfo } from './vitest.ts';

/** Test-only entry points the tier's local node runs besides vdisk and vdisk-agent. */
const TEST_ENTRYPOINTS = { 'vdisk-probe': 'test/controlplane/fixtures/probe.ts' };

function loudSkip(reason: string): ControlPlaneInfo {
  const bar = '!'.repeat(100);
  console.warn(`${bar}\nSKIPPING the integration tier's Kubernetes tests: ${reason}\n${bar}`);
  return { available: false, skipReason: reason };
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env.VDISK_TEST_KUBECONFIG;
  if (external !== undefined && external !== '') {
    project.provide('vdiskControlPlane', {
      available: true,
      kubeconfigPath: resolve(external),
      kubectlPath: join(REPO_ROOT, '.local', 'bin', 'kubectl'),
      serverUrl: '',
      nodeName: 'vdisk-local',
      storageClassName: 'vdisk-local',
      provisionerName: 'vdisk.dev/local',
      volumesDir: join(REPO_ROOT, '.local', 'volumes'),
      stateDir: join(REPO_ROOT, '.local', 'node'),
      repoRoot: REPO_ROOT,
      startMs: 0,
    });
    return undefined;
  }
  if (spawnSync('openssl', ['version']).status !== 0) {
    project.provide('vdiskControlPlane', loudSkip('openssl is not installed (needed for the certificates)'));
    return undefined;
  }
  const assets = await ensureAssets();
  if (!assets.ok) {
    project.provide('vdiskControlPlane', loudSkip(assets.skipReason));
    return undefined;
  }
  const startedAt = Date.now();
  const controlPlane = await startControlPlane({ assetsDir: assets.dir });
  const workDir = await mkdtemp(join(tmpdir(), 'vdisk-integration-'));
  removeTempFolderOnCrash(workDir);
  let node: Awaited<ReturnType<typeof startLocalNode>>;
  try {
    node = await startLocalNode(controlPlane.kubeConfig, {
      stateDir: join(workDir, 'node'),
      volumesDir: join(workDir, 'volumes'),
      podKubeconfigPath: controlPlane.kubeconfigPath,
      extraEntrypoints: TEST_ENTRYPOINTS,
      restartBackoffMs: { initial: 200, max: 2_000 },
      quiet: process.env.VDISK_LOCAL_NODE_LOG !== '1',
    });
  } catch (err) {
    await controlPlane.stop();
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }
  const startMs = Date.now() - startedAt;
  console.info(
    `control plane + local node ready in ${startMs} ms (${controlPlane.serverUrl}, logs in ${controlPlane.dir}/logs)`,
  );
  project.provide('vdiskControlPlane', {
    available: true,
    kubeconfigPath: controlPlane.kubeconfigPath,
    kubectlPath: binaryPath(assets.dir, 'kubectl'),
    serverUrl: controlPlane.serverUrl,
    nodeName: node.nodeName,
    storageClassName: node.storageClassName,
    provisionerName: node.provisionerName,
    volumesDir: node.volumesDir,
    stateDir: node.stateDir,
    repoRoot: REPO_ROOT,
    startMs,
  });
  return async () => {
    const pids = [...controlPlane.processes.map((p) => p.pid), ...node.runningPids()];
    await node.stop();
    await controlPlane.stop();
    await rm(workDir, { recursive: true, force: true });
    forgetTempFolder(workDir);
    const left = (await Promise.all(pids.map(processGroupMembers))).flat();
    if (left.length > 0) throw new Error(`the control plane left processes behind: ${left.join(', ')}`);
  };
}
