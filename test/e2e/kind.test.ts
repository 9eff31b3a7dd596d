// End to end on kind: create a cluster, build and load the image, helm install, apply the samples, wait
// Ready, attach on the kind node, delete, uninstall. Needs a Docker engine and kind; where either is
// missing (as on our CI machines, which have no Docker engine) the tier skips and says why.
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '..', '..');
const CLUSTER = 'vdisk-e2e';
const IMAGE = 'vdisk:e2e';

function missingPart(): string | undefined {
  const docker = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8' });
  if (docker.error || docker.status !== 0) return 'no Docker engine answers `docker info`';
  for (const tool of ['kind', 'helm', 'kubectl']) {
    if (spawnSync(tool, ['version'], { encoding: 'utf8' }).error) return `\`${tool}\` is not on PATH`;
  }
  return undefined;
}

const missing = missingPart();
if (missing) console.warn(`SKIP e2e tier (kind): ${missing}`);

const run = (command: string, ...args: string[]) =>
  execFileSync(command, args, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
const kubectl = (...args: string[]) => run('kubectl', '--context', `kind-${CLUSTER}`, ...args);

describe.skipIf(missing !== undefined)('kind: install with Helm and use the operator', () => {
  beforeAll(() => {
    run('kind', 'create', 'cluster', '--name', CLUSTER, '--wait', '120s');
    run('docker', 'build', '-t', IMAGE, '.');
    run('kind', 'load', 'docker-image', IMAGE, '--name', CLUSTER);
    run(
      'helm',
      '--kube-context',
      `kind-${CLUSTER}`,
      'install',
      'vdisk',
      'charts/vdisk-operator',
      '-n',
      'vdisk-system',
      '--create-namespace',
      '--set',
      'image.repository=vdisk',
      '--set',
      'image.tag=e2e',
      '--wait',
      '--timeout',
      '180s',
    );
  }, 900_000);

  afterAll(() => {
    spawnSync('kind', ['delete', 'cluster', '--name', CLUSTER], { stdio: 'inherit' });
  });

  it('makes the blank sample Ready', () => {
    kubectl('apply', '-f', 'config/samples/virtualdisk.yaml');
    kubectl('wait', '--for=jsonpath={.status.phase}=Ready', 'vd/demo-disk', '--timeout=300s');
    expect(kubectl('get', 'vd', 'demo-disk', '-o', 'jsonpath={.status.image.format}')).toBe('qcow2');
  });

  it('attaches the disk on the kind node and detaches it on delete', () => {
    const node = kubectl('get', 'nodes', '-o', 'jsonpath={.items[0].metadata.name}');
    kubectl(
      'patch',
      'vd',
      'demo-disk',
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { attach: { nodeName: node } } }),
    );
    kubectl('wait', '--for=condition=Attached', 'vd/demo-disk', '--timeout=300s');
    expect(kubectl('get', 'vd', 'demo-disk', '-o', 'jsonpath={.status.attachment.device}')).toMatch(
      /^\/dev\/nbd\d+$/,
    );
    kubectl('delete', 'vd', 'demo-disk', '--wait=true', '--timeout=300s');
    expect(kubectl('get', 'jobs,pods', '-o', 'name')).toBe('');
  });

  it('uninstalls cleanly', () => {
    run('helm', '--kube-context', `kind-${CLUSTER}`, 'uninstall', 'vdisk', '-n', 'vdisk-system', '--wait');
    expect(kubectl('get', 'deploy', '-n', 'vdisk-system', '-o', 'name')).toBe('');
  });
});
