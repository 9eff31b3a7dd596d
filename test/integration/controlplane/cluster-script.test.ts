// `npm run cluster:up` / `cluster:down` (scripts/cluster.ts), run for real in a temp folder
// (VDISK_LOCAL_DIR): a detached cluster comes up, kubectl reaches it, state survives down/up,
// and down stops every process it started.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { processGroupMembers } from '../../controlplane/processes.ts';
import { controlPlane, describeWithControlPlane } from '../../controlplane/vitest.ts';

const run = promisify(execFile);

describeWithControlPlane('cluster:up / cluster:down', () => {
  let localDir: string;
  const script = () => join(controlPlane().repoRoot, 'scripts', 'cluster.ts');
  const cluster = (...args: string[]) =>
    run(process.execPath, [script(), ...args], {
      env: {
        ...process.env,
        VDISK_LOCAL_DIR: localDir,
        KUBEBUILDER_ASSETS: join(controlPlane().kubectlPath, '..'),
      },
      timeout: 240_000,
    });
  const kubectl = (...args: string[]) =>
    run(join(localDir, 'bin', 'kubectl'), ['--kubeconfig', join(localDir, 'kubeconfig'), ...args]);

  beforeAll(async () => {
    localDir = await mkdtemp(join(tmpdir(), 'vdisk-cluster-script-'));
  });
  afterAll(async () => {
    await cluster('down', '--purge').catch(() => undefined);
    await rm(localDir, { recursive: true, force: true });
  });

  it('starts a detached cluster, keeps its state across down/up, and stops every process', async () => {
    await cluster('up');
    const nodes = JSON.parse((await kubectl('get', 'nodes', '-o', 'json')).stdout);
    expect(nodes.items.map((n: { metadata: { name: string } }) => n.metadata.name)).toEqual(['vdisk-local']);
    await kubectl('create', 'configmap', 'survivor', '--from-literal=a=b');
    const firstPids = JSON.parse(await readFile(join(localDir, 'cluster.json'), 'utf8'))
      .componentPids as number[];
    expect(firstPids).toHaveLength(4);

    await cluster('down');
    for (const pid of firstPids) expect(await processGroupMembers(pid)).toEqual([]);
    expect(existsSync(join(localDir, 'cluster.pid'))).toBe(false);

    await cluster('up');
    expect((await kubectl('get', 'configmap', 'survivor', '-o', 'jsonpath={.data.a}')).stdout).toBe('b');
    const secondPids = JSON.parse(await readFile(join(localDir, 'cluster.json'), 'utf8'))
      .componentPids as number[];
    await cluster('down', '--purge');
    for (const pid of secondPids) expect(await processGroupMembers(pid)).toEqual([]);
    expect(existsSync(join(localDir, 'controlplane'))).toBe(false);
  });
});
