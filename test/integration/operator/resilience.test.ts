// The controller survives being killed: a controller process SIGKILLed at several points of a disk's
// first reconciles is replaced, the disk converges to Ready, and exactly one imager Job was ever
// created for it (deterministic names + 409). Leader election hands over when the leader stops.
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  BatchV1Api,
  CoordinationV1Api,
  type CustomObjectsApi,
  type KubeConfig,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../../../src/controller/logger.ts';
import { Manager } from '../../../src/controller/manager.ts';
import { createMetrics } from '../../../src/controller/metrics.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
  waitFor,
} from '../../controlplane/vitest.ts';
import { createDisk, customApi, installCrds, waitForPhase } from './helpers.ts';

const MIB = 1024 * 1024;

describeWithControlPlane('controller resilience on a real control plane', () => {
  let kubeConfig: KubeConfig;
  let kubeconfigPath: string;
  let custom: CustomObjectsApi;
  let namespace: string;
  let server: Server;
  let baseUrl: string;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    kubeconfigPath = plane.kubeconfigPath;
    custom = customApi(kubeConfig);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vdkill');
    // A slow body keeps the imager Job running for ~2 s: a window to kill the controller in.
    server = createServer((_request, response) => {
      response.writeHead(200, { 'content-length': 2 * MIB });
      let sent = 0;
      const timer = setInterval(() => {
        response.write(Buffer.alloc(256 * 1024, 1));
        sent += 256 * 1024;
        if (sent >= 2 * MIB) {
          clearInterval(timer);
          response.end();
        }
      }, 250);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    server?.close();
  });

  function startControllerProcess(): ChildProcess {
    const child = spawn(
      process.execPath,
      [
        join(controlPlane().repoRoot, 'bin', 'vdisk-agent.mjs'),
        'controller',
        `--kubeconfig=${kubeconfigPath}`,
        `--namespace=${namespace}`,
        '--metrics-port=-1',
      ],
      { stdio: 'ignore' },
    );
    children.push(child);
    return child;
  }

  async function kill(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  it('converges after SIGKILLs at several points, creating exactly one imager Job', async () => {
    // Polled, not watched: a watch can time out under load, and every Job here lives >= 2 s.
    const jobUids = new Set<string>();
    const batch = kubeConfig.makeApiClient(BatchV1Api);
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const jobs = await batch
          .listNamespacedJob({ namespace, labelSelector: 'vdisk.dev/disk=crash' })
          .catch(() => undefined);
        for (const job of jobs?.items ?? []) if (job.metadata?.uid) jobUids.add(job.metadata.uid);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    try {
      await createDisk(custom, namespace, 'crash', {
        size: '2Mi',
        format: 'qcow2',
        source: { http: { url: `${baseUrl}/slow.img` } },
      });
      // Killed early (finalizer / PVC), then once the Job exists (imager still running), then left to finish.
      for (const delayMs of [300, 900]) {
        const child = startControllerProcess();
        await new Promise((resolve) => setTimeout(resolve, delayMs + 1500));
        await kill(child);
      }
      const third = startControllerProcess();
      await waitFor('imager Job created', async () => jobUids.size > 0, {
        timeoutMs: 60_000,
        intervalMs: 50,
      });
      await kill(third);
      startControllerProcess();
      const disk = await waitForPhase(custom, namespace, 'virtualdisks', 'crash', 'Ready', 120_000);
      expect(disk.status).toMatchObject({ image: { format: 'qcow2', virtualSize: 2 * MIB } });
      expect(jobUids.size).toBe(1);
    } finally {
      polling = false;
      await poller;
    }
  });

  it('hands leadership to a standby when the leader stops', async () => {
    const make = (identity: string) => {
      const log = createLogger('vdisk-controller-test');
      log.level = 'silent';
      return new Manager({
        kubeConfig,
        log,
        namespace,
        metrics: createMetrics(false),
        leaderElection: {
          namespace,
          identity,
          leaseName: 'vdisk-test-lease',
          leaseDurationSeconds: 4,
          renewDeadlineSeconds: 3,
          retryPeriodSeconds: 1,
        },
      });
    };
    const first = make('first');
    const second = make('second');
    await first.start();
    await eventually('first leads', async () => first.isReady, Boolean, 20_000);
    await second.start();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(second.isReady).toBe(false);
    await first.stop();
    await eventually('second leads', async () => second.isReady, Boolean, 20_000);
    await second.stop();
  });

  it('shuts down gracefully on SIGTERM: exit 0 and the Lease is released for a successor', async () => {
    const child = spawn(
      process.execPath,
      [
        join(controlPlane().repoRoot, 'bin', 'vdisk-agent.mjs'),
        'controller',
        `--kubeconfig=${kubeconfigPath}`,
        `--namespace=${namespace}`,
        '--metrics-port=0',
        '--leader-elect',
        `--leader-election-namespace=${namespace}`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    children.push(child);
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    await waitFor('leader Lease acquired', async () => output.includes('Acquired leader Lease'), {
      timeoutMs: 30_000,
      intervalMs: 100,
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output).toContain('Stopped controller');
    const lease = await kubeConfig
      .makeApiClient(CoordinationV1Api)
      .readNamespacedLease({ name: 'vdisk-controller', namespace });
    expect(lease.spec?.holderIdentity ?? '').toBe('');
  });
});
