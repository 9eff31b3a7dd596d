// Disk sources end to end on the tier's control plane: http import from a 127.0.0.1 server (checksum
// mismatch fails with both sums; a good .gz imports byte-exact), clone, external snapshot then
// restore, a snapshot refused while its disk is attached read-write. qemu-img compare is the oracle.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CoreV1Api, type CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Manager } from '../../../src/controller/manager.ts';
import { qcow2Driver } from '../../../src/engine/formats/qcow2/driver.ts';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';
import {
  claimFolder,
  deleteAndWaitGone,
  createDisk,
  createSnapshot,
  customApi,
  installCrds,
  readObject,
  startController,
  waitForPhase,
  pattern,
} from './helpers.ts';

const MIB = 1024 * 1024;
const hasInternalSnapshots = qcow2Driver.capabilities.internalSnapshots;
if (!hasInternalSnapshots)
  console.warn('SKIP internal snapshot test: the qcow2 driver has no internal snapshots yet');

type DiskStatus = {
  claimName: string;
  image: { path: string; sha256?: string };
  message?: string;
  conditions: Array<{ type: string; reason: string; message: string }>;
};

describeWithControlPlane('VirtualDisk sources on a real control plane', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let namespace: string;
  let manager: Manager;
  let server: Server;
  let baseUrl: string;
  const files = new Map<string, Buffer>();

  beforeAll(async () => {
    const plane = controlPlane();
    kubeConfig = plane.kubeConfig();
    custom = customApi(kubeConfig);
    await installCrds(kubeConfig, plane.kubectlPath, plane.kubeconfigPath);
    namespace = await createTestNamespace(kubeConfig, 'vdsrc');
    manager = await startController(kubeConfig, namespace);
    server = createServer((request, response) => {
      if (request.url?.startsWith('/private/') && request.headers.authorization !== 'Bearer let-me-in') {
        return void response.writeHead(401).end();
      }
      const body = files.get(request.url ?? '');
      if (!body) return void response.writeHead(404).end();
      response.writeHead(200, { 'content-length': body.length }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await manager?.stop();
    server?.close();
  });

  async function imageOf(name: string): Promise<string> {
    const disk = await readObject(custom, namespace, 'virtualdisks', name);
    const status = disk.status as DiskStatus;
    return join(await claimFolder(kubeConfig, namespace, status.claimName), status.image.path);
  }

  it('ends an http import with a wrong sha256 in Failed, naming both sums', async () => {
    const body = pattern(MIB, 1);
    files.set('/wrong.img', body);
    const expected = 'b'.repeat(64);
    const actual = createHash('sha256').update(body).digest('hex');
    await createDisk(custom, namespace, 'import-bad', {
      size: '2Mi',
      source: { http: { url: `${baseUrl}/wrong.img`, sha256: expected } },
    });
    const disk = await waitForPhase(custom, namespace, 'virtualdisks', 'import-bad', 'Failed');
    const ready = (disk.status as DiskStatus).conditions.find((c) => c.type === 'Ready')!;
    expect(ready.reason).toBe('ChecksumMismatch');
    expect(ready.message).toContain(expected);
    expect(ready.message).toContain(actual);
  });

  it('imports a .gz raw image over http into qcow2, byte-exact', async () => {
    const body = pattern(3 * MIB, 7);
    const gz = gzipSync(body);
    files.set('/good.img.gz', gz);
    const sha256 = createHash('sha256').update(gz).digest('hex');
    await createDisk(custom, namespace, 'import-good', {
      size: '3Mi',
      format: 'qcow2',
      source: { http: { url: `${baseUrl}/good.img.gz`, sha256 } },
    });
    const disk = await waitForPhase(custom, namespace, 'virtualdisks', 'import-good', 'Ready');
    expect((disk.status as DiskStatus).image.sha256).toBe(sha256);
    const reference = join(
      await claimFolder(kubeConfig, namespace, (disk.status as DiskStatus).claimName),
      'reference.raw',
    );
    await writeFile(reference, body);
    execFileSync('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'qcow2',
      reference,
      await imageOf('import-good'),
    ]);
  });

  it('sends the headers of spec.source.http.secretRef (a Secret mounted into the imager pod)', async () => {
    files.set('/private/disk.img', pattern(MIB, 5));
    await kubeConfig.makeApiClient(CoreV1Api).createNamespacedSecret({
      namespace,
      body: { metadata: { name: 'http-auth' }, stringData: { headers: 'Authorization: Bearer let-me-in\n' } },
    });
    await createDisk(custom, namespace, 'import-private', {
      size: '1Mi',
      format: 'raw',
      source: { http: { url: `${baseUrl}/private/disk.img`, secretRef: { name: 'http-auth' } } },
    });
    await waitForPhase(custom, namespace, 'virtualdisks', 'import-private', 'Ready');
    expect((await readFile(await imageOf('import-private'))).equals(files.get('/private/disk.img')!)).toBe(
      true,
    );
  });

  it('clones a disk once its source is Ready, byte-exact', async () => {
    // The clone is declared first: it waits for its source.
    await createDisk(custom, namespace, 'clone-copy', {
      size: '4Mi',
      format: 'qcow2',
      source: { virtualDisk: { name: 'clone-base' } },
    });
    const waiting = await eventually(
      'clone waiting for its source',
      () => readObject(custom, namespace, 'virtualdisks', 'clone-copy'),
      (read) => read.status?.phase === 'Pending',
    );
    expect((waiting.status as DiskStatus).conditions.find((c) => c.type === 'Ready')?.reason).toBe(
      'WaitingForSource',
    );
    files.set('/base.img', pattern(4 * MIB, 3));
    await createDisk(custom, namespace, 'clone-base', {
      size: '4Mi',
      format: 'raw',
      source: { http: { url: `${baseUrl}/base.img` } },
    });
    await waitForPhase(custom, namespace, 'virtualdisks', 'clone-copy', 'Ready');
    execFileSync('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'qcow2',
      await imageOf('clone-base'),
      await imageOf('clone-copy'),
    ]);
  });

  it('takes an external snapshot and restores it into a new disk', async () => {
    files.set('/snapbase.img', pattern(2 * MIB, 11));
    await createDisk(custom, namespace, 'snap-disk', {
      size: '2Mi',
      format: 'qcow2',
      source: { http: { url: `${baseUrl}/snapbase.img` } },
    });
    await waitForPhase(custom, namespace, 'virtualdisks', 'snap-disk', 'Ready');
    await createSnapshot(custom, namespace, 'snap-1', { virtualDiskName: 'snap-disk', mode: 'external' });
    const snapshot = await waitForPhase(custom, namespace, 'disksnapshots', 'snap-1', 'Ready');
    expect(snapshot.status).toMatchObject({ readyToUse: true, snapshotName: 'snap-1', restoreSize: '2Mi' });
    const frozen = join(await claimFolder(kubeConfig, namespace, 'vdisk-snap-disk'), 'snapshot-snap-1.qcow2');
    await createDisk(custom, namespace, 'snap-restored', {
      size: '2Mi',
      format: 'raw',
      source: { snapshot: { name: 'snap-1' } },
    });
    await waitForPhase(custom, namespace, 'virtualdisks', 'snap-restored', 'Ready');
    execFileSync('qemu-img', ['compare', '-F', 'raw', frozen, await imageOf('snap-restored')]);
    // Deleting the snapshot completes (the finalizer's Job runs; an external file keeps backing the disk).
    await deleteAndWaitGone(custom, namespace, 'disksnapshots', 'snap-1', 'DiskSnapshot deleted');
  });

  it.skipIf(!hasInternalSnapshots)(
    'takes an internal qcow2 snapshot, restores it, and removes it from the image on delete',
    async () => {
      files.set('/internal.img', pattern(2 * MIB, 13));
      await createDisk(custom, namespace, 'int-disk', {
        size: '2Mi',
        format: 'qcow2',
        source: { http: { url: `${baseUrl}/internal.img` } },
      });
      await waitForPhase(custom, namespace, 'virtualdisks', 'int-disk', 'Ready');
      await createSnapshot(custom, namespace, 'int-snap', { virtualDiskName: 'int-disk', mode: 'internal' });
      await waitForPhase(custom, namespace, 'disksnapshots', 'int-snap', 'Ready');
      const listing = execFileSync('qemu-img', ['snapshot', '-l', '-U', await imageOf('int-disk')], {
        encoding: 'utf8',
      });
      expect(listing).toContain('int-snap');
      await createDisk(custom, namespace, 'int-restored', {
        size: '2Mi',
        format: 'raw',
        source: { snapshot: { name: 'int-snap' } },
      });
      await waitForPhase(custom, namespace, 'virtualdisks', 'int-restored', 'Ready');
      expect((await readFile(await imageOf('int-restored'))).equals(files.get('/internal.img')!)).toBe(true);
      // Deleting the DiskSnapshot removes the snapshot from the image before the object goes.
      await deleteAndWaitGone(
        custom,
        namespace,
        'disksnapshots',
        'int-snap',
        'DiskSnapshot int-snap deleted',
      );
      expect(
        execFileSync('qemu-img', ['snapshot', '-l', '-U', await imageOf('int-disk')], { encoding: 'utf8' }),
      ).not.toContain('int-snap');
      execFileSync('qemu-img', ['check', '-U', await imageOf('int-disk')]);
    },
  );

  it('starts an attach pod pinned to the node, and refuses to snapshot the disk while attached read-write', async () => {
    // A node with no kubelet: the pod stays Pending, so this test never runs nbd-client on the host.
    await createDisk(custom, namespace, 'attached', {
      size: '2Mi',
      source: { blank: {} },
      attach: { nodeName: 'absent-node' },
    });
    const disk = await waitForPhase(custom, namespace, 'virtualdisks', 'attached', 'Ready');
    expect(disk.status).toMatchObject({
      attachment: { nodeName: 'absent-node', readOnly: false },
      node: 'absent-node',
    });
    const pods = await kubeConfig
      .makeApiClient(CoreV1Api)
      .listNamespacedPod({ namespace, labelSelector: 'vdisk.dev/disk=attached,vdisk.dev/role=attach' });
    expect(pods.items).toHaveLength(1);
    const pod = pods.items[0]!;
    expect(pod.spec?.nodeName).toBe('absent-node');
    expect(pod.spec?.containers[0]?.args).toEqual(
      expect.arrayContaining(['attach', '--image=/data/disk.qcow2', '--format=qcow2']),
    );
    const attached = await eventually(
      'Attached condition',
      () => readObject(custom, namespace, 'virtualdisks', 'attached'),
      (read) =>
        (read.status as DiskStatus).conditions.some(
          (c) => c.type === 'Attached' && c.message.includes('Pending'),
        ),
    );
    expect((attached.status as DiskStatus).conditions.find((c) => c.type === 'Attached')?.reason).toBe(
      'WaitingForNode',
    );
    await createSnapshot(custom, namespace, 'snap-attached', { virtualDiskName: 'attached' });
    const snapshot = await eventually(
      'snapshot waiting',
      () => readObject(custom, namespace, 'disksnapshots', 'snap-attached'),
      (read) => read.status?.phase === 'Pending',
    );
    const ready = (snapshot.status as DiskStatus).conditions.find((c) => c.type === 'Ready')!;
    expect(ready.reason).toBe('WaitingForDisk');
    expect(ready.message).toContain('attached read-write on node absent-node');
  });
});
