// The harness itself: a second, private control plane + local node with a running pod is started and
// stopped, and afterwards no process of any component or container is left and its folder is gone.
// kubectl (built with the binaries) talks to it through the written kubeconfig.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api } from '@kubernetes/client-node';
import { expect, it } from 'vitest';
import { binaryPath } from '../../controlplane/assets.ts';
import { startControlPlane } from '../../controlplane/harness.ts';
import { startLocalNode } from '../../controlplane/local-node.ts';
import { isAlive, processGroupMembers } from '../../controlplane/processes.ts';
import { controlPlane, describeWithControlPlane, eventually } from '../../controlplane/vitest.ts';

const run = promisify(execFile);

describeWithControlPlane('control plane harness', () => {
  it('talks to kubectl of the same version through the written kubeconfig', async () => {
    const { kubectlPath, kubeconfigPath, nodeName } = controlPlane();
    const version = JSON.parse(
      (await run(kubectlPath, ['--kubeconfig', kubeconfigPath, 'version', '-o', 'json'])).stdout,
    );
    expect(version.serverVersion.gitVersion).toBe('v1.34.4');
    expect(version.clientVersion.gitVersion).toBe('v1.34.4');
    const nodes = JSON.parse(
      (await run(kubectlPath, ['--kubeconfig', kubeconfigPath, 'get', 'nodes', '-o', 'json'])).stdout,
    );
    expect(nodes.items.map((n: { metadata: { name: string } }) => n.metadata.name)).toContain(nodeName);
  });

  it('leaves no process and no folder behind after stop()', async () => {
    const assetsDir = join(controlPlane().kubectlPath, '..');
    const startedMs = Date.now();
    const plane = await startControlPlane({ assetsDir });
    const workDir = await mkdtemp(join(tmpdir(), 'vdisk-harness-test-'));
    let pids: number[] = plane.processes.map((p) => p.pid);
    try {
      const node = await startLocalNode(plane.kubeConfig, {
        nodeName: 'harness-node',
        stateDir: join(workDir, 'node'),
        volumesDir: join(workDir, 'volumes'),
        extraEntrypoints: { 'vdisk-probe': 'test/controlplane/fixtures/probe.ts' },
        quiet: true,
      });
      console.info(`private control plane + local node ready in ${Date.now() - startedMs} ms`);
      try {
        const core = plane.kubeConfig.makeApiClient(CoreV1Api);
        await core.createNamespacedPod({
          namespace: 'default',
          body: {
            metadata: { name: 'long' },
            spec: {
              nodeName: 'harness-node',
              restartPolicy: 'Never',
              containers: [{ name: 'main', image: 'vdisk:dev', command: ['vdisk-probe', 'sleep:600000'] }],
            },
          },
        });
        await eventually(
          'pod running',
          () => core.readNamespacedPod({ namespace: 'default', name: 'long' }),
          (p) => p.status?.phase === 'Running',
        );
        expect(node.runningPids()).toHaveLength(1);
        pids = [...pids, ...node.runningPids()];
      } finally {
        await node.stop();
      }
    } finally {
      await plane.stop();
      await rm(workDir, { recursive: true, force: true });
    }
    for (const pid of pids) {
      expect(await isAlive(pid)).toBe(false);
      expect(await processGroupMembers(pid)).toEqual([]);
    }
    expect(pids).toHaveLength(5);
    expect(existsSync(plane.dir)).toBe(false);
    expect(binaryPath(assetsDir, 'etcd')).toBe(join(assetsDir, 'etcd'));
  });
});
