// desiredDisk as a table: (spec, observed) -> PVC, Jobs, finalizer and status.
import { describe, expect, it } from 'vitest';
import type { DiskSnapshot } from '../../../../src/api/disk-snapshot.ts';
import { imagerArgs, parseImagerArgs } from '../../../../src/api/imager.ts';
import {
  parseVirtualDisk,
  type VirtualDisk,
  type VirtualDiskSpecInput,
} from '../../../../src/api/virtual-disk.ts';
import { DEFAULT_POD_SETTINGS } from '../../../../src/controller/imager-job.ts';
import { FINALIZER } from '../../../../src/controller/naming.ts';
import type { ObservedJob } from '../../../../src/controller/observed-job.ts';
import { desiredDisk, type ObservedDisk } from '../../../../src/controller/virtualdisk/desired.ts';

const NOW = '2026-01-01T00:00:00Z';
const GIB = 2 ** 30;

function disk(
  spec: VirtualDiskSpecInput,
  extra: { status?: unknown; finalizers?: string[]; deleting?: boolean; name?: string } = {},
): VirtualDisk {
  return parseVirtualDisk({
    apiVersion: 'vdisk.dev/v1alpha1',
    metadata: {
      name: extra.name ?? 'd1',
      namespace: 'ns',
      uid: 'uid-1',
      generation: 3,
      finalizers: extra.finalizers ?? [FINALIZER],
      ...(extra.deleting ? { deletionTimestamp: NOW } : {}),
    },
    spec,
    status: extra.status,
  });
}

function observed(target: VirtualDisk, extra: Partial<ObservedDisk> = {}): ObservedDisk {
  return {
    disk: target,
    claim: {
      metadata: {
        name: 'vdisk-d1',
        namespace: 'ns',
        ownerReferences: [
          { apiVersion: 'vdisk.dev/v1alpha1', kind: 'VirtualDisk', name: 'd1', uid: 'uid-1' },
        ],
      },
      spec: { resources: { requests: { storage: '1025Mi' } } },
    },
    jobs: [],
    attachPods: [],
    requiredClaimBytes: 1025 * 2 ** 20,
    sourceDisk: undefined,
    sourceSnapshot: undefined,
    sourceSnapshotDisk: undefined,
    settings: DEFAULT_POD_SETTINGS,
    now: NOW,
    ...extra,
  };
}

function job(
  name: string,
  state: ObservedJob['state'],
  result?: ObservedJob['result'],
  ownerKind = 'VirtualDisk',
): ObservedJob {
  return {
    name,
    operation: name.split('-')[2] ?? '',
    ownerKind,
    state,
    result,
    failureMessage: state === 'failed' ? 'BackoffLimitExceeded' : undefined,
    isDeleting: false,
  };
}

const readyImage = { path: 'disk.qcow2', format: 'qcow2', virtualSize: GIB };
const blank = { size: '1Gi', source: { blank: {} } } satisfies VirtualDiskSpecInput;

function argsOf(result: ReturnType<typeof desiredDisk>) {
  const container = result.createJobs[0]?.spec?.template.spec?.containers[0];
  return container?.args ? parseImagerArgs(container.args.slice(1)) : undefined;
}

describe('desiredDisk', () => {
  it('adds the finalizer and creates a PVC sized from the measure when none exists', () => {
    const result = desiredDisk(observed(disk(blank, { finalizers: [] }), { claim: undefined }));
    expect(result.addFinalizer).toBe(true);
    expect(result.createClaim?.metadata?.name).toBe('vdisk-d1');
    expect(result.createClaim?.spec?.resources?.requests?.storage).toBe('1025Mi');
    expect(result.createClaim?.spec?.accessModes).toEqual(['ReadWriteOnce']);
    expect(result.createClaim?.metadata?.ownerReferences?.[0]).toMatchObject({
      kind: 'VirtualDisk',
      uid: 'uid-1',
      controller: true,
    });
  });

  it.each([
    [
      'blank',
      blank,
      'vd-d1-create',
      { operation: 'create', image: '/data/disk.qcow2', format: 'qcow2', sizeBytes: GIB },
    ],
    [
      'raw blank with options',
      { size: '64Mi', format: 'raw', source: { blank: {} }, formatOptions: { preallocation: 'off' } },
      'vd-d1-create',
      {
        operation: 'create',
        image: '/data/disk.img',
        format: 'raw',
        sizeBytes: 64 * 2 ** 20,
        options: { preallocation: 'off' },
      },
    ],
    [
      'http import with checksum',
      { size: '1Gi', source: { http: { url: 'http://127.0.0.1:8080/a.img.gz', sha256: 'a'.repeat(64) } } },
      'vd-d1-import',
      { operation: 'import', url: 'http://127.0.0.1:8080/a.img.gz', sha256: 'a'.repeat(64) },
    ],
  ] as const)('starts one imager Job for a %s source', (_label, spec, jobName, expectedRequest) => {
    const result = desiredDisk(observed(disk(spec as VirtualDiskSpecInput)));
    expect(result.createJobs.map((created) => created.metadata?.name)).toEqual([jobName]);
    expect(argsOf(result)).toMatchObject(expectedRequest);
    const pod = result.createJobs[0]!.spec!.template.spec!;
    expect(pod.containers[0]!.command).toEqual(['vdisk-agent']);
    expect(pod.volumes?.[0]?.persistentVolumeClaim?.claimName).toBe('vdisk-d1');
    expect(result.status.phase).toBe('Provisioning');
    expect(result.status.conditions?.find((c) => c.type === 'Progressing')).toMatchObject({
      status: 'True',
      observedGeneration: 3,
    });
    expect(result.status.conditions?.find((c) => c.type === 'Ready')?.status).toBe('False');
  });

  it('does not start a second Job while the first runs (a restarted controller finds it by name)', () => {
    const result = desiredDisk(observed(disk(blank), { jobs: [job('vd-d1-create', 'active')] }));
    expect(result.createJobs).toEqual([]);
    expect(result.status.phase).toBe('Provisioning');
  });

  it('records the image from the termination message, deletes the Job and becomes Ready', () => {
    const result = desiredDisk(
      observed(disk(blank), {
        jobs: [
          job('vd-d1-create', 'succeeded', {
            ok: true,
            operation: 'create',
            image: { ...readyImage, actualSize: 196_608, clusterSize: 65_536 },
          }),
        ],
      }),
    );
    expect(result.status.image).toEqual({ ...readyImage, actualSize: 196_608, clusterSize: 65_536 });
    expect(result.deleteJobs).toEqual(['vd-d1-create']);
    expect(result.status.phase).toBe('Ready');
    expect(result.status.size).toBe('1Gi');
    expect(result.status.conditions?.find((c) => c.type === 'Ready')).toMatchObject({
      status: 'True',
      reason: 'ImageReady',
    });
    expect(result.events).toEqual([expect.objectContaining({ type: 'Normal', reason: 'ImageReady' })]);
  });

  it('does not delete a finished Job again while its first delete is in progress (status not seen yet)', () => {
    const deleting = {
      ...job('vd-d1-create', 'succeeded', { ok: true, operation: 'create', image: readyImage }),
      isDeleting: true,
    };
    const result = desiredDisk(observed(disk(blank), { jobs: [deleting] }));
    expect(result.status.image).toEqual(readyImage);
    expect(result.status.phase).toBe('Ready');
    expect(result.deleteJobs).toEqual([]);
  });

  it('fails with ChecksumMismatch naming both sums', () => {
    const expected = 'a'.repeat(64);
    const actual = 'b'.repeat(64);
    const result = desiredDisk(
      observed(disk({ size: '1Gi', source: { http: { url: 'http://x/y', sha256: expected } } }), {
        jobs: [
          job('vd-d1-import', 'failed', {
            ok: false,
            operation: 'import',
            code: 'VDISK_ECHECKSUM',
            message: 'checksum mismatch',
            expectedSha256: expected,
            actualSha256: actual,
          }),
        ],
      }),
    );
    expect(result.status.phase).toBe('Failed');
    const ready = result.status.conditions?.find((c) => c.type === 'Ready');
    expect(ready?.reason).toBe('ChecksumMismatch');
    expect(ready?.message).toContain(expected);
    expect(ready?.message).toContain(actual);
    expect(result.createJobs).toEqual([]);
    expect(result.events[0]?.type).toBe('Warning');
  });

  it('grows the PVC and starts a resize Job when spec.size grows', () => {
    const result = desiredDisk(
      observed(disk({ ...blank, size: '2Gi' }, { status: { image: readyImage, phase: 'Ready' } }), {
        requiredClaimBytes: 2049 * 2 ** 20,
      }),
    );
    expect(result.expandClaimToBytes).toBe(2049 * 2 ** 20);
    expect(result.createJobs[0]?.metadata?.name).toBe(`vd-d1-resize-${2 * GIB}`);
    expect(argsOf(result)).toMatchObject({ operation: 'resize', sizeBytes: 2 * GIB });
    expect(result.status.phase).toBe('Resizing');
  });

  it('waits for another Job on the same PVC (a snapshot) before resizing', () => {
    const result = desiredDisk(
      observed(disk({ ...blank, size: '2Gi' }, { status: { image: readyImage } }), {
        jobs: [job('vds-s1-create', 'active', undefined, 'DiskSnapshot')],
      }),
    );
    expect(result.createJobs).toEqual([]);
    expect(result.status.conditions?.find((c) => c.type === 'Ready')?.message).toContain('vds-s1-create');
  });

  it('waits for a clone source to be Ready, then mounts its PVC read-only at /source', () => {
    const spec = { size: '1Gi', source: { virtualDisk: { name: 'base' } } } satisfies VirtualDiskSpecInput;
    const notReady = desiredDisk(observed(disk(spec), { sourceDisk: disk(blank, { name: 'base' }) }));
    expect(notReady.createJobs).toEqual([]);
    expect(notReady.status.phase).toBe('Pending');
    expect(notReady.status.conditions?.find((c) => c.type === 'Ready')?.reason).toBe('WaitingForSource');

    const source = disk(blank, {
      name: 'base',
      status: { phase: 'Ready', image: readyImage, claimName: 'vdisk-base' },
    });
    const ready = desiredDisk(observed(disk(spec), { sourceDisk: source }));
    expect(argsOf(ready)).toMatchObject({ operation: 'clone', source: '/source/disk.qcow2' });
    const pod = ready.createJobs[0]!.spec!.template.spec!;
    expect(pod.volumes?.[1]?.persistentVolumeClaim).toEqual({ claimName: 'vdisk-base', readOnly: true });
  });

  it('waits with a message when the clone source is larger than spec.size', () => {
    const spec = { size: '512Mi', source: { virtualDisk: { name: 'base' } } } satisfies VirtualDiskSpecInput;
    const source = disk(blank, {
      name: 'base',
      status: { phase: 'Ready', image: readyImage, claimName: 'vdisk-base' },
    });
    const result = desiredDisk(observed(disk(spec), { sourceDisk: source }));
    expect(result.createJobs).toEqual([]);
    expect(result.status.conditions?.find((c) => c.type === 'Ready')?.message).toContain('grow spec.size');
  });

  it('restores an internal snapshot by name from the snapshot disk', () => {
    const spec = { size: '1Gi', source: { snapshot: { name: 's1' } } } satisfies VirtualDiskSpecInput;
    const snapshot: DiskSnapshot = {
      apiVersion: 'vdisk.dev/v1alpha1',
      kind: 'DiskSnapshot',
      metadata: { name: 's1', namespace: 'ns' },
      spec: { virtualDiskName: 'base', mode: 'internal' },
      status: { readyToUse: true, snapshotName: 's1' },
    };
    const source = disk(blank, {
      name: 'base',
      status: { phase: 'Ready', image: readyImage, claimName: 'vdisk-base' },
    });
    const result = desiredDisk(
      observed(disk(spec), { sourceSnapshot: snapshot, sourceSnapshotDisk: source }),
    );
    expect(argsOf(result)).toMatchObject({
      operation: 'restore',
      source: '/source/disk.qcow2',
      snapshot: 's1',
    });
  });

  it('on deletion removes Jobs and the PVC (Delete policy), then the finalizer', () => {
    const result = desiredDisk(
      observed(disk(blank, { deleting: true }), { jobs: [job('vd-d1-create', 'active')] }),
    );
    expect(result.deleteJobs).toEqual(['vd-d1-create']);
    expect(result.deleteClaim).toBe(true);
    expect(result.removeFinalizer).toBe(true);
    expect(result.createJobs).toEqual([]);
    expect(result.status.phase).toBe('Terminating');
  });

  it('on deletion with Retain releases the PVC instead of deleting it', () => {
    const result = desiredDisk(observed(disk({ ...blank, deletionPolicy: 'Retain' }, { deleting: true })));
    expect(result.deleteClaim).toBe(false);
    expect(result.releaseClaim).toBe(true);
  });

  it('keeps a Ready condition transition time when nothing changes', () => {
    const before = '2025-06-01T00:00:00Z';
    const result = desiredDisk(
      observed(
        disk(blank, {
          status: {
            image: readyImage,
            conditions: [
              {
                type: 'Ready',
                status: 'True',
                reason: 'ImageReady',
                message: 'x',
                lastTransitionTime: before,
              },
            ],
          },
        }),
      ),
    );
    expect(result.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime).toBe(before);
    expect(result.events).toEqual([]);
    expect(result.createJobs).toEqual([]);
  });

  it('starts an attach pod pinned to spec.attach.nodeName once the image is Ready', () => {
    const spec = { ...blank, attach: { nodeName: 'node-7', mounts: [{ partition: 1, path: '/mnt/d1' }] } };
    const result = desiredDisk(observed(disk(spec, { status: { image: readyImage } })));
    const pod = result.createPods[0]!;
    expect(pod.spec?.nodeName).toBe('node-7');
    expect(pod.spec?.containers[0]?.args).toEqual(
      expect.arrayContaining(['attach', '--image=/data/disk.qcow2', '--format=qcow2', '--mount=1:/mnt/d1']),
    );
    expect(
      pod.spec?.containers[0]?.volumeMounts?.find((m) => m.mountPath === '/mnt/d1')?.mountPropagation,
    ).toBe('Bidirectional');
    expect(result.status.attachment).toEqual({ nodeName: 'node-7', readOnly: false });
    expect(result.status.conditions?.find((c) => c.type === 'Attached')).toMatchObject({
      status: 'False',
      reason: 'WaitingForNode',
    });
  });

  it('reports Attached when the attach pod runs, AttachFailed with the agent error when it ended', () => {
    const spec = { ...blank, attach: { nodeName: 'node-7' } };
    const target = disk(spec, { status: { image: readyImage } });
    const name = desiredDisk(observed(target)).createPods[0]!.metadata!.name!;
    const running = desiredDisk(
      observed(target, { attachPods: [{ metadata: { name }, status: { phase: 'Running' } }] }),
    );
    expect(running.createPods).toEqual([]);
    expect(running.status.conditions?.find((c) => c.type === 'Attached')).toMatchObject({
      status: 'True',
      reason: 'Mounted',
    });
    const report = JSON.stringify({
      phase: 'Failed',
      error: { code: 'VDISK_ENODEV', message: 'no free /dev/nbd device' },
    });
    const failed = desiredDisk(
      observed(target, {
        attachPods: [
          {
            metadata: { name },
            status: {
              phase: 'Failed',
              containerStatuses: [
                {
                  name: 'attach',
                  image: 'vdisk:dev',
                  imageID: '',
                  ready: false,
                  restartCount: 0,
                  state: { terminated: { exitCode: 1, message: report } },
                },
              ],
            },
          },
        ],
      }),
    );
    const attached = failed.status.conditions?.find((c) => c.type === 'Attached');
    expect(attached?.reason).toBe('AttachFailed');
    expect(attached?.message).toContain('VDISK_ENODEV: no free /dev/nbd device');
  });

  it('fills status.attachment with the device and partitions the running agent reported in its log', () => {
    const spec = { ...blank, attach: { nodeName: 'node-7', mounts: [{ partition: 1, path: '/mnt/d1' }] } };
    const target = disk(spec, { status: { image: readyImage } });
    const name = desiredDisk(observed(target)).createPods[0]!.metadata!.name!;
    const pod = { metadata: { name, uid: 'pod-uid' }, status: { phase: 'Running' } };
    const partitions = [{ name: 'nbd0p1', start: 1048576, size: 1072693248, mountPath: '/mnt/d1' }];
    const reported = desiredDisk(
      observed(target, {
        attachPods: [pod],
        reports: {
          get: (uid) => (uid === 'pod-uid' ? { attach: { device: '/dev/nbd0', partitions } } : undefined),
        },
      }),
    );
    expect(reported.status.attachment).toEqual({
      nodeName: 'node-7',
      readOnly: false,
      device: '/dev/nbd0',
      partitions,
    });
    expect(reported.status.conditions?.find((c) => c.type === 'Attached')?.message).toContain(
      'Attached as /dev/nbd0 on node node-7',
    );
    const silent = desiredDisk(observed(target, { attachPods: [pod], reports: { get: () => undefined } }));
    expect(silent.status.attachment).toEqual({ nodeName: 'node-7', readOnly: false });
  });

  it("shows the running imager's reported progress in status.progress, 0% at start and 100% when done", () => {
    const spec = {
      size: '1Gi',
      source: { http: { url: 'http://127.0.0.1/x.img' } },
    } satisfies VirtualDiskSpecInput;
    const started = desiredDisk(observed(disk(spec)));
    expect(started.status.progress).toBe('0%');
    const jobName = started.createJobs[0]!.metadata!.name!;
    const running = desiredDisk(
      observed(disk(spec), { jobs: [{ ...job(jobName, 'active'), progress: 42.5 }] }),
    );
    expect(running.status.progress).toBe('42.5%');
    const unknown = desiredDisk(observed(disk(spec), { jobs: [job(jobName, 'active')] }));
    expect(unknown.status.progress).toBe('0%');
    const done = desiredDisk(
      observed(disk(spec), {
        jobs: [job(jobName, 'succeeded', { ok: true, operation: 'import', image: readyImage })],
      }),
    );
    expect(done.status.progress).toBe('100%');
    expect(done.status.phase).toBe('Ready');
  });

  it('detaches (deletes the attach pod) when spec.attach is removed, and waits for it before resizing', () => {
    const pods = [{ metadata: { name: 'vd-d1-attach-1234abcd' }, status: { phase: 'Running' } }];
    const detached = desiredDisk(
      observed(disk(blank, { status: { image: readyImage } }), { attachPods: pods }),
    );
    expect(detached.deletePods).toEqual(['vd-d1-attach-1234abcd']);
    expect(detached.status.conditions?.find((c) => c.type === 'Attached')?.reason).toBe('Detaching');
    const grow = desiredDisk(
      observed(disk({ ...blank, size: '2Gi' }, { status: { image: readyImage } }), { attachPods: pods }),
    );
    expect(grow.createJobs).toEqual([]);
    expect(grow.deletePods).toEqual(['vd-d1-attach-1234abcd']);
  });

  it('reaches a fixed point: reconciling a Ready disk again changes nothing (no API writes)', () => {
    const first = desiredDisk(observed(disk(blank, { status: { image: readyImage } })));
    const again = desiredDisk(observed(disk(blank, { status: JSON.parse(JSON.stringify(first.status)) })));
    expect(again.status).toEqual(first.status);
    expect([again.createJobs, again.deleteJobs, again.createPods, again.deletePods, again.events]).toEqual([
      [],
      [],
      [],
      [],
      [],
    ]);
    expect([again.addFinalizer, again.createClaim, again.expandClaimToBytes]).toEqual([
      false,
      undefined,
      undefined,
    ]);
  });

  it("adopts the image a DiskSnapshot's Job reports (the snapshot list changes)", () => {
    const result = desiredDisk(
      observed(disk(blank, { status: { image: { ...readyImage, sha256: 'c'.repeat(64) } } }), {
        jobs: [
          job(
            'vds-s1-create',
            'succeeded',
            { ok: true, operation: 'snapshot-create', image: { ...readyImage, snapshots: ['s1'] } },
            'DiskSnapshot',
          ),
        ],
      }),
    );
    expect(result.status.image).toEqual({ ...readyImage, snapshots: ['s1'], sha256: 'c'.repeat(64) });
    expect(result.deleteJobs).toEqual([]);
  });

  it('round-trips imager argv', () => {
    const request = {
      operation: 'import',
      image: '/data/disk.qcow2',
      format: 'qcow2',
      sizeBytes: 5,
      url: 'http://h/x?a=b=c',
      options: { compat: '1.1' },
    } as const;
    expect(parseImagerArgs(imagerArgs(request))).toEqual(request);
  });
});
