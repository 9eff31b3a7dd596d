// The install paths users take, checked against the real control plane: helm lint and template, every
// rendered manifest and every config/ manifest accepted by `kubectl apply --dry-run=server`, the chart
// installed for real with the controller Deployment's pod spec checked, the samples and README's YAML
// blocks accepted by the API server. helm is built from the Go module proxy (test/chart/build-helm.sh).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppsV1Api, CoreV1Api, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { controlPlane, createTestNamespace, describeWithControlPlane } from '../../controlplane/vitest.ts';
import { installCrds } from '../operator/helpers.ts';

const REPO = join(import.meta.dirname, '..', '..', '..');
const CHART = join(REPO, 'charts', 'vdisk-operator');

function buildHelm(): { path?: string; skip?: string } {
  const result = spawnSync('bash', [join(REPO, 'test', 'chart', 'build-helm.sh')], {
    encoding: 'utf8',
    timeout: 900_000,
  });
  if (result.status === 3) return { skip: result.stderr.trim() };
  if (result.status !== 0) throw new Error(`build-helm.sh failed: ${result.stderr}`);
  return { path: result.stdout.trim().split('\n').pop() };
}

/** The ```yaml blocks of README.md, in order. */
export function readmeYamlBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/```ya?ml\n([\s\S]*?)```/g)].map((match) => match[1] ?? '');
}

describeWithControlPlane('Helm chart and manifests on the real API server', () => {
  let helm = '';
  let namespace = '';
  let work = '';
  const kubectl = (...args: string[]) =>
    execFileSync(controlPlane().kubectlPath, ['--kubeconfig', controlPlane().kubeconfigPath, ...args], {
      encoding: 'utf8',
      stdio: 'pipe',
    });
  const runHelm = (...args: string[]) =>
    execFileSync(helm, ['--kubeconfig', controlPlane().kubeconfigPath, ...args], {
      encoding: 'utf8',
      stdio: 'pipe',
    });

  beforeAll(async () => {
    const built = buildHelm();
    if (!built.path) {
      console.warn(`SKIP helm checks: ${built.skip}`);
      return;
    }
    helm = built.path;
    work = mkdtempSync(join(tmpdir(), 'vdisk-chart-'));
    const plane = controlPlane();
    const kubeConfig = plane.kubeConfig();
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'chart');
  }, 900_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('passes helm lint --strict', () => {
    expect(helm, 'helm could not be built').not.toBe('');
    expect(runHelm('lint', CHART, '--strict', '--kube-version', '1.34.4')).toMatch(
      /1 chart\(s\) linted, 0 chart\(s\) failed/,
    );
  });

  it('renders manifests the API server accepts (kubectl apply --dry-run=server)', () => {
    const rendered = runHelm(
      'template',
      'vdisk',
      CHART,
      '-n',
      namespace,
      '--include-crds',
      '--kube-version',
      '1.34.4',
      '--set',
      'metrics.serviceMonitor.enabled=false',
    );
    const file = join(work, 'rendered.yaml');
    writeFileSync(file, rendered);
    const kinds = parseAllDocuments(rendered)
      .map((doc) => (doc.toJS() as { kind?: string } | null)?.kind)
      .filter(Boolean);
    expect(kinds).toEqual(
      expect.arrayContaining([
        'CustomResourceDefinition',
        'ServiceAccount',
        'ClusterRole',
        'ClusterRoleBinding',
        'Role',
        'RoleBinding',
        'Service',
        'Deployment',
      ]),
    );
    const out = kubectl('apply', '--dry-run=server', '-n', namespace, '-f', file);
    expect(out).toMatch(
      /deployment.apps\/vdisk-controller (created|configured|unchanged) \(server dry run\)/,
    );
  });

  it('rejects values that break the schema (values.schema.json)', () => {
    const result = spawnSync(
      helm,
      ['template', 'vdisk', CHART, '--kube-version', '1.34.4', '--set', 'logLevel=loud'],
      { encoding: 'utf8' },
    );
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/logLevel/);
  });

  it('accepts every config/ manifest (kubectl apply -k config/default --dry-run=server)', () => {
    kubectl('create', 'namespace', 'vdisk-system', '--dry-run=client', '-o', 'yaml');
    spawnSync(controlPlane().kubectlPath, [
      '--kubeconfig',
      controlPlane().kubeconfigPath,
      'create',
      'namespace',
      'vdisk-system',
    ]);
    const out = kubectl('apply', '--dry-run=server', '-k', join(REPO, 'config', 'default'));
    expect(out).toMatch(/deployment.apps\/vdisk-controller .*\(server dry run\)/);
    expect(out).toMatch(/clusterrole.rbac.authorization.k8s.io\/vdisk-controller .*\(server dry run\)/);
  });

  it('accepts every sample in config/samples/', () => {
    const folder = join(REPO, 'config', 'samples');
    const samples = readdirSync(folder).filter(
      (name) => name.endsWith('.yaml') && name !== 'kustomization.yaml',
    );
    expect(samples.length).toBeGreaterThan(3);
    for (const sample of samples) {
      const out = kubectl('apply', '--dry-run=server', '-n', namespace, '-f', join(folder, sample));
      expect(out, sample).toMatch(/\(server dry run\)/);
    }
  });

  it('accepts every YAML block in README.md', () => {
    const blocks = readmeYamlBlocks(readFileSync(join(REPO, 'README.md'), 'utf8'));
    expect(blocks.length).toBeGreaterThan(0);
    // The GitOps examples use Argo CD's and Flux's kinds; install permissive stand-ins for their CRDs so
    // the API server can take them (it checks apiVersion/kind/metadata; their own controllers check more).
    kubectl('apply', '-f', join(REPO, 'test', 'chart', 'gitops-crds.yaml'));
    kubectl(
      'wait',
      '--for=condition=Established',
      '--timeout=60s',
      'crd/applications.argoproj.io',
      'crd/helmreleases.helm.toolkit.fluxcd.io',
    );
    blocks.forEach((block, index) => {
      const file = join(work, `readme-${index}.yaml`);
      writeFileSync(file, block);
      const out = kubectl('apply', '--dry-run=server', '-n', namespace, '-f', file);
      expect(out, `README block ${index}:\n${block}`).toMatch(/\(server dry run\)/);
    });
  });

  it('installs for real, with the controller pod spec the design asks for, and uninstalls cleanly', async () => {
    const release = 'vdisk-it';
    // replicaCount=0: the controller's image would be run by the local node, which has no in-cluster
    // credentials to hand it; the objects, not a running pod, are what this test checks.
    runHelm(
      'install',
      release,
      CHART,
      '-n',
      namespace,
      '--set',
      'replicaCount=0',
      '--wait',
      '--timeout',
      '60s',
    );
    const kubeConfig = controlPlane().kubeConfig();
    const apps = kubeConfig.makeApiClient(AppsV1Api);
    const deployment = await apps.readNamespacedDeployment({ namespace, name: `${release}-controller` });
    const pod = deployment.spec?.template.spec;
    const container = pod?.containers[0];
    expect(pod?.serviceAccountName).toBe(`${release}-controller`);
    expect(pod?.securityContext?.runAsNonRoot).toBe(true);
    expect(container?.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(container?.securityContext?.allowPrivilegeEscalation).toBe(false);
    expect(container?.securityContext?.capabilities?.drop).toEqual(['ALL']);
    expect(container?.command).toEqual(['vdisk-agent']);
    expect(container?.args).toEqual(
      expect.arrayContaining(['controller', '--leader-elect', `--leader-election-namespace=${namespace}`]),
    );
    expect(container?.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(container?.readinessProbe?.httpGet?.path).toBe('/readyz');
    const rbac = kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    const role = await rbac.readClusterRole({ name: `${release}-controller` });
    const wanted = parse(readFileSync(join(REPO, 'config', 'rbac', 'role.yaml'), 'utf8')) as {
      rules: unknown[];
    };
    expect(JSON.parse(JSON.stringify(role.rules))).toEqual(
      JSON.parse(JSON.stringify(wanted.rules, (_key, value) => value)),
    );
    runHelm('uninstall', release, '-n', namespace, '--wait');
    const core = kubeConfig.makeApiClient(CoreV1Api);
    const accounts = await core.listNamespacedServiceAccount({ namespace });
    expect(accounts.items.map((account) => account.metadata?.name)).not.toContain(`${release}-controller`);
  });
});
