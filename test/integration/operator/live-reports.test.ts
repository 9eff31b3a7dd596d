// What running worker pods report before they end, on the tier's control plane: an http import's
// status.progress climbs while the download is held half-way (the server releases the rest only after
// the test saw a value between 0 and 100), a server that drops the connection mid-transfer is retried
// by the Job and the disk still ends Ready byte-exact, and PodReports reads an attach agent's report
// line from a running pod's log through the API server (pods/log, follow).
import { execFileSync } from 'node:child_process';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { CoreV1Api, type CustomObjectsApi, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../../../src/controller/logger.ts';
import type { Manager } from '../../../src/controller/manager.ts';
import { PodReports } from '../../../src/controller/pod-reports.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';
import {
  claimFolder,
  createDisk,
  customApi,
  installCrds,
  readObject,
  startController,
  waitForPhase,
  pattern,
} from './helpers.ts';

const MIB = 1024 * 1024;

type Handler = (response: ServerResponse, attempt: number) => void;

describeWithControlPlane('live reports of running worker pods', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let core: CoreV1Api;
  let namespace: string;
  let manager: Manager;
  let server: Server;
  let baseUrl: string;
  const handlers = new Map<string, Handler>();
  const attempts = new Map<string, number>();

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    custom = customApi(kubeConfig);
    core = kubeConfig.makeApiClient(CoreV1Api);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vdlive');
    manager = await startController(kubeConfig, namespace);
    server = createServer((request, response) => {
      const path = request.url ?? '';
      const attempt = (attempts.get(path) ?? 0) + 1;
      attempts.set(path, attempt);
      const handler = handlers.get(path);
      if (!handler) return void response.writeHead(404).end();
      handler(response, attempt);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await manager?.stop();
    server?.closeAllConnections();
    server?.close();
  });

  async function imageBytes(name: string): Promise<Buffer> {
    const status = (await readObject(custom, namespace, 'virtualdisks', name)).status as {
      claimName: string;
      image: { path: string };
    };
    return readFile(join(await claimFolder(kubeConfig, namespace, status.claimName), status.image.path));
  }

  it('shows an import climbing in status.progress, then 100% once Ready', async () => {
    const body = pattern(8 * MIB, 21);
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    handlers.set('/slow.img', (response) => {
      response.writeHead(200, { 'content-length': body.length });
      response.write(body.subarray(0, 3 * MIB));
      void released.then(() => response.end(body.subarray(3 * MIB)));
    });
    await createDisk(custom, namespace, 'import-slow', {
      size: '8Mi',
      format: 'raw',
      source: { http: { url: `${baseUrl}/slow.img` } },
    });
    const midway = await eventually(
      'status.progress between 0% and 100%',
      () => readObject(custom, namespace, 'virtualdisks', 'import-slow'),
      (read) => {
        const progress = Number.parseFloat(String(read.status?.progress ?? ''));
        return progress > 0 && progress < 100;
      },
      60_000,
    );
    release();
    // 3 of 8 MiB were sent: the imager reported at least 1% steps up to ~37.5%.
    const seen = Number.parseFloat(String(midway.status?.progress));
    expect(seen).toBeGreaterThanOrEqual(1);
    expect(seen).toBeLessThanOrEqual(37.5);
    expect(midway.status?.phase).toBe('Provisioning');
    const ready = await waitForPhase(custom, namespace, 'virtualdisks', 'import-slow', 'Ready');
    expect(ready.status?.progress).toBe('100%');
    expect((await imageBytes('import-slow')).equals(body)).toBe(true);
  });

  it('retries an import whose server dies mid-transfer, and ends Ready byte-exact', async () => {
    const body = pattern(4 * MIB, 33);
    handlers.set('/flaky.img', (response, attempt) => {
      response.writeHead(200, { 'content-length': body.length });
      if (attempt === 1) {
        // Half the body, then the connection drops: the imager exits 1 and the Job runs a second pod.
        response.write(body.subarray(0, 2 * MIB), () => response.socket?.destroy());
        return;
      }
      response.end(body);
    });
    await createDisk(custom, namespace, 'import-flaky', {
      size: '4Mi',
      format: 'qcow2',
      source: { http: { url: `${baseUrl}/flaky.img` } },
    });
    await waitForPhase(custom, namespace, 'virtualdisks', 'import-flaky', 'Ready', 120_000);
    expect(attempts.get('/flaky.img')).toBe(2);
    const status = (await readObject(custom, namespace, 'virtualdisks', 'import-flaky')).status as {
      claimName: string;
      image: { path: string; format: string };
    };
    expect(status.image.format).toBe('qcow2');
    const folder = await claimFolder(kubeConfig, namespace, status.claimName);
    const converted = join(folder, 'converted.raw');
    execFileSync('qemu-img', [
      'convert',
      '-f',
      'qcow2',
      '-O',
      'raw',
      join(folder, status.image.path),
      converted,
    ]);
    expect((await readFile(converted)).equals(body)).toBe(true);
  });

  it("reads an attach agent's report from a running pod's log", async () => {
    const report = {
      phase: 'Attached',
      id: 'ns.disk',
      device: '/dev/nbd3',
      readOnly: false,
      partitions: [
        { number: 1, name: 'nbd3p1', path: '/dev/mapper/nbd3p1', start: 1048576, size: 4193280 * 512 },
      ],
    };
    const created = await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'fake-attach', labels: { 'vdisk.dev/role': 'attach' } },
        spec: {
          restartPolicy: 'Never',
          containers: [
            {
              name: 'attach',
              image: 'vdisk:dev',
              command: [
                'vdisk-probe',
                'say:{"msg":"a log line first"}',
                `say:${JSON.stringify(report)}`,
                'sleep:60000',
              ],
            },
          ],
        },
      },
    });
    const log = createLogger('pod-reports-test');
    log.level = 'silent';
    const reported: string[] = [];
    const reports = new PodReports(kubeConfig, log, (pod: V1Pod) => reported.push(pod.metadata?.name ?? ''));
    try {
      const running = await eventually(
        'fake attach pod running',
        () => core.readNamespacedPod({ name: 'fake-attach', namespace }),
        (pod) => pod.status?.phase === 'Running',
      );
      reports.observe(running);
      const seen = await eventually(
        'attach report read from the log',
        async () => reports.get(created.metadata?.uid),
        (value) => value?.attach !== undefined,
        30_000,
      );
      expect(seen?.attach).toEqual({
        device: '/dev/nbd3',
        partitions: [{ name: 'nbd3p1', start: 1048576, size: 4193280 * 512 }],
      });
      expect(reported).toEqual(['fake-attach']);
      // The stream closes once the report is in.
      await eventually(
        'log stream closed',
        async () => reports.streams,
        (count) => count === 0,
      );
      // A later update of the same running pod opens no new stream: the report is complete.
      reports.observe(running);
      expect(reports.streams).toBe(0);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(reported).toEqual(['fake-attach']);
      reports.observe(running, true);
      expect(reports.get(created.metadata?.uid)).toBeUndefined();
    } finally {
      reports.stop();
      await core.deleteNamespacedPod({ name: 'fake-attach', namespace, gracePeriodSeconds: 0 });
    }
  });
});
