// The local node plays the kubelet for vdisk pods: a Job's pod is created by the Job controller,
// bound by kube-scheduler, run as a local process, and the Job completes; env, volumes (PVC folder,
// emptyDir), termination messages, exit codes, restarts and graceful deletion reach the real API.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BatchV1Api, CoreV1Api, type V1Pod } from '@kubernetes/client-node';
import { beforeAll, expect, it } from 'vitest';
import { isAlive } from '../../controlplane/processes.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';

const run = promisify(execFile);

/** Waits until the container printed "ready" (its signal handlers are installed by then). */
async function waitForReadyLine(pod: V1Pod): Promise<void> {
  const log = join(controlPlane().stateDir, 'pods', pod.metadata?.uid ?? '', 'main.log');
  await eventually(
    'container ready line',
    () => readFile(log, 'utf8'),
    (text) => text.includes('ready'),
  );
}

function pidOf(pod: V1Pod): number {
  const id = pod.status?.containerStatuses?.[0]?.containerID ?? '';
  return Number(id.replace('vdisk-local://', ''));
}

describeWithControlPlane('local node', () => {
  let core: CoreV1Api;
  let batch: BatchV1Api;
  let namespace: string;

  beforeAll(async () => {
    const kubeConfig = controlPlane().kubeConfig();
    core = kubeConfig.makeApiClient(CoreV1Api);
    batch = kubeConfig.makeApiClient(BatchV1Api);
    namespace = await createTestNamespace(kubeConfig, 'node');
  });

  const readPod = (name: string) => () => core.readNamespacedPod({ namespace, name });
  const isFinished = (pod: V1Pod) => pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';

  it('runs a Job: Job controller -> scheduler -> local node -> Complete', async () => {
    await batch.createNamespacedJob({
      namespace,
      body: {
        metadata: { name: 'version' },
        spec: {
          backoffLimit: 0,
          template: {
            spec: {
              restartPolicy: 'Never',
              containers: [
                { name: 'main', image: 'ghcr.io/example/vdisk:0.1.0', command: ['vdisk', '--version'] },
              ],
            },
          },
        },
      },
    });
    const job = await eventually(
      'Job complete',
      () => batch.readNamespacedJob({ namespace, name: 'version' }),
      // The Job controller counts the pod before it adds the terminal condition: wait for the condition.
      (j) =>
        j.status?.conditions?.some(
          (c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True',
        ) === true,
    );
    expect(job.status?.conditions?.find((c) => c.type === 'Complete')?.status).toBe('True');
    expect(job.status?.succeeded).toBe(1);

    const pods = await core.listNamespacedPod({ namespace, labelSelector: 'job-name=version' });
    expect(pods.items).toHaveLength(1);
    const pod = pods.items[0] as V1Pod;
    expect(pod.spec?.nodeName).toBe(controlPlane().nodeName);
    expect(pod.status?.phase).toBe('Succeeded');
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated?.exitCode).toBe(0);
    expect(pod.status?.conditions?.find((c) => c.type === 'PodScheduled')?.status).toBe('True');

    // The container's output is what the CLI prints when run directly.
    const direct = await run(process.execPath, [join(controlPlane().repoRoot, 'bin/vdisk.mjs'), '--version']);
    const log = await readFile(
      join(controlPlane().stateDir, 'pods', pod.metadata?.uid ?? '', 'main.log'),
      'utf8',
    );
    expect(log).toBe(direct.stdout);
  });

  it('serves container logs to kubectl logs through the apiserver', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'talker' },
        spec: {
          restartPolicy: 'Never',
          containers: [
            { name: 'main', image: 'vdisk:dev', command: ['vdisk-probe', 'say:hello', 'say:world'] },
          ],
        },
      },
    });
    await eventually('talker finished', readPod('talker'), isFinished);
    const { kubectlPath, kubeconfigPath } = controlPlane();
    const kubectl = (...args: string[]) =>
      run(kubectlPath, ['--kubeconfig', kubeconfigPath, '-n', namespace, ...args]);
    expect((await kubectl('logs', 'talker')).stdout).toBe('hello\nworld\n');
    expect((await kubectl('logs', 'talker', '--tail=1')).stdout).toBe('world\n');
    expect((await kubectl('logs', 'talker', '--limit-bytes=3')).stdout).toBe('hel');
  });

  it('follows a running container with kubectl logs -f until it exits', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'ticker' },
        spec: {
          restartPolicy: 'Never',
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'say:ready', 'sleep:1500', 'say:done'],
            },
          ],
        },
      },
    });
    const running = await eventually(
      'ticker running',
      readPod('ticker'),
      (p) => p.status?.phase === 'Running',
    );
    await waitForReadyLine(running);
    const { kubectlPath, kubeconfigPath } = controlPlane();
    const followed = await run(kubectlPath, [
      '--kubeconfig',
      kubeconfigPath,
      '-n',
      namespace,
      'logs',
      '-f',
      'ticker',
    ]);
    expect(followed.stdout).toBe('ready\ndone\n');
  });

  it('fails a pod whose image is not vdisk with reason UnsupportedImage', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'busybox' },
        spec: {
          restartPolicy: 'Never',
          containers: [{ name: 'main', image: 'busybox:1.36', command: ['true'] }],
        },
      },
    });
    const pod = await eventually('pod failed', readPod('busybox'), isFinished);
    expect(pod.status?.phase).toBe('Failed');
    expect(pod.status?.reason).toBe('UnsupportedImage');
    expect(pod.status?.containerStatuses?.[0]?.state?.waiting?.reason).toBe('UnsupportedImage');
    const events = await eventually(
      'UnsupportedImage event',
      () => core.listNamespacedEvent({ namespace, fieldSelector: 'involvedObject.name=busybox' }),
      (list) => list.items.some((e) => e.reason === 'UnsupportedImage'),
    );
    expect(events.items.find((e) => e.reason === 'UnsupportedImage')?.type).toBe('Warning');
  });

  it('gives a container its env, PVC and emptyDir folders, and reports exit code and termination message', async () => {
    await core.createNamespacedPersistentVolumeClaim({
      namespace,
      body: {
        metadata: { name: 'data' },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
      },
    });
    await core.createNamespacedConfigMap({
      namespace,
      body: { metadata: { name: 'settings' }, data: { colour: 'blue' } },
    });
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'probe', labels: { app: 'probe' } },
        spec: {
          restartPolicy: 'Never',
          volumes: [
            { name: 'data', persistentVolumeClaim: { claimName: 'data' } },
            { name: 'scratch', emptyDir: {} },
          ],
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe'],
              args: [
                'env:POD_NAME=>/data/pod-name',
                'env:COLOUR=>/data/colour',
                'write:/data/greeting=$(GREETING) world',
                'write:/scratch/tmp=x',
                'message:{"result":"done"}',
                'exit:3',
              ],
              env: [
                { name: 'GREETING', value: 'hello' },
                { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'COLOUR', valueFrom: { configMapKeyRef: { name: 'settings', key: 'colour' } } },
              ],
              volumeMounts: [
                { name: 'data', mountPath: '/data' },
                { name: 'scratch', mountPath: '/scratch' },
              ],
            },
          ],
        },
      },
    });
    const pod = await eventually('probe finished', readPod('probe'), isFinished);
    expect(pod.status?.phase).toBe('Failed');
    const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
    expect(terminated?.exitCode).toBe(3);
    expect(terminated?.reason).toBe('Error');
    expect(terminated?.message).toBe('{"result":"done"}');

    const claim = await core.readNamespacedPersistentVolumeClaim({ namespace, name: 'data' });
    const volume = await core.readPersistentVolume({ name: claim.spec?.volumeName ?? '' });
    const folder = volume.spec?.hostPath?.path ?? '';
    expect(folder.startsWith(controlPlane().volumesDir)).toBe(true);
    expect(await readFile(join(folder, 'pod-name'), 'utf8')).toBe('probe');
    expect(await readFile(join(folder, 'colour'), 'utf8')).toBe('blue');
    expect(await readFile(join(folder, 'greeting'), 'utf8')).toBe('hello world');
    const podDir = join(controlPlane().stateDir, 'pods', pod.metadata?.uid ?? '');
    expect(await readFile(join(podDir, 'volumes', 'scratch', 'tmp'), 'utf8')).toBe('x');
  });

  it('runs init containers to completion, in order, before the containers', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'staged' },
        spec: {
          restartPolicy: 'Never',
          volumes: [{ name: 'work', emptyDir: {} }],
          initContainers: [
            { name: 'first', image: 'vdisk:dev', command: ['vdisk-probe', 'write:/work/step=1'] },
            {
              name: 'second',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'expect:/work/step=1', 'write:/work/step=2'],
            },
          ].map((c) => ({ ...c, volumeMounts: [{ name: 'work', mountPath: '/work' }] })),
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'expect:/work/step=2'],
              volumeMounts: [{ name: 'work', mountPath: '/work' }],
            },
          ],
        },
      },
    });
    const pod = await eventually('staged finished', readPod('staged'), isFinished);
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated?.message).toBeUndefined();
    expect(pod.status?.phase).toBe('Succeeded');
    expect(pod.status?.initContainerStatuses?.map((s) => s.state?.terminated?.exitCode)).toEqual([0, 0]);
    expect(pod.status?.conditions?.find((c) => c.type === 'Initialized')?.status).toBe('True');
  });

  it('restarts a failed container under restartPolicy OnFailure', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'flaky' },
        spec: {
          restartPolicy: 'OnFailure',
          volumes: [{ name: 'state', emptyDir: {} }],
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'fail-once:/state/marker', 'exit:0'],
              volumeMounts: [{ name: 'state', mountPath: '/state' }],
            },
          ],
        },
      },
    });
    const pod = await eventually('flaky finished', readPod('flaky'), isFinished);
    expect(pod.status?.phase).toBe('Succeeded');
    const status = pod.status?.containerStatuses?.[0];
    expect(status?.restartCount).toBe(1);
    expect(status?.lastState?.terminated?.exitCode).toBe(1);
  });

  it('restarts a container that exits 0 under restartPolicy Always, with back-off', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'looper' },
        spec: {
          restartPolicy: 'Always',
          containers: [{ name: 'main', image: 'vdisk:dev', command: ['vdisk-probe', 'exit:0'] }],
        },
      },
    });
    const pod = await eventually(
      'looper restarted twice',
      readPod('looper'),
      (p) => (p.status?.containerStatuses?.[0]?.restartCount ?? 0) >= 2,
    );
    expect(pod.status?.phase).toBe('Running');
    expect(pod.status?.containerStatuses?.[0]?.lastState?.terminated?.exitCode).toBe(0);
    await core.deleteNamespacedPod({ namespace, name: 'looper' });
    await eventually(
      'looper gone',
      () => core.listNamespacedPod({ namespace, fieldSelector: 'metadata.name=looper' }),
      (l) => l.items.length === 0,
    );
  });

  it('stops a running pod with SIGTERM on deletion and then removes it', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'sleeper' },
        spec: {
          restartPolicy: 'Never',
          terminationGracePeriodSeconds: 30,
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'trap-term:got SIGTERM', 'say:ready', 'sleep:600000'],
            },
          ],
        },
      },
    });
    const running = await eventually(
      'sleeper running',
      readPod('sleeper'),
      (p) => p.status?.phase === 'Running',
    );
    await waitForReadyLine(running);
    const pid = pidOf(running);
    expect(await isAlive(pid)).toBe(true);
    const startedMs = Date.now();
    await core.deleteNamespacedPod({ namespace, name: 'sleeper' });
    await eventually(
      'sleeper gone',
      () => core.listNamespacedPod({ namespace, fieldSelector: 'metadata.name=sleeper' }),
      (l) => l.items.length === 0,
    );
    // The process handled SIGTERM at once: far quicker than the 30 s grace period.
    expect(Date.now() - startedMs).toBeLessThan(20_000);
    expect(await isAlive(pid)).toBe(false);
    const message = join(
      controlPlane().stateDir,
      'pods',
      running.metadata?.uid ?? '',
      'containers',
      'main',
      'termination-log',
    );
    expect(await readFile(message, 'utf8')).toBe('got SIGTERM');
  });

  it('kills a process that ignores SIGTERM once the grace period is over', async () => {
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'stubborn' },
        spec: {
          restartPolicy: 'Never',
          containers: [
            {
              name: 'main',
              image: 'vdisk:dev',
              command: ['vdisk-probe', 'ignore-term', 'say:ready', 'sleep:600000'],
            },
          ],
        },
      },
    });
    const running = await eventually(
      'stubborn running',
      readPod('stubborn'),
      (p) => p.status?.phase === 'Running',
    );
    await waitForReadyLine(running);
    const pid = pidOf(running);
    const startedMs = Date.now();
    await core.deleteNamespacedPod({ namespace, name: 'stubborn', gracePeriodSeconds: 1 });
    await eventually(
      'stubborn gone',
      () => core.listNamespacedPod({ namespace, fieldSelector: 'metadata.name=stubborn' }),
      (l) => l.items.length === 0,
    );
    expect(Date.now() - startedMs).toBeGreaterThanOrEqual(1_000);
    expect(await isAlive(pid)).toBe(false);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });
});
