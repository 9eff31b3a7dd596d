// desiredSnapshot as a table: (snapshot, disk, jobs) -> Jobs, finalizer and status.
import { describe, expect, it } from 'vitest';
import { parseDiskSnapshot } from '../../../../src/api/disk-snapshot.ts';
import { parseImagerArgs } from '../../../../src/api/imager.ts';
import { parseVirtualDisk, type VirtualDisk } from '../../../../src/api/virtual-disk.ts';
import { desiredSnapshot, type ObservedSnapshot } from '../../../../src/controller/disksnapshot/desired.ts';
import { DEFAULT_POD_SETTINGS } from '../../../../src/controller/imager-job.ts';
import { FINALIZER } from '../../../../src/controller/naming.ts';
import type { ObservedJob } from '../../../../src/controller/observed-job.ts';

const NOW = '2026-01-01T00:00:00Z';
const readyImage = { path: 'disk.qcow2', format: 'qcow2', virtualSize: 2 ** 30 };

function readyDisk(extra: { format?: string; attach?: unknown } = {}): VirtualDisk {
  return parseVirtualDisk({
    apiVersion: 'vdisk.dev/v1alpha1',
    metadata: { name: 'd1', namespace: 'ns', uid: 'disk-uid' },
    spec: {
      size: '1Gi',
      format: extra.format ?? 'qcow2',
      source: { blank: {} },
      ...(extra.attach ? { attach: extra.attach } : {}),
    },
    status: { phase: 'Ready', image: readyImage, claimName: 'vdisk-d1' },
  });
}

function observed(
  extra: {
    mode?: string;
    status?: unknown;
    deleting?: boolean;
    disk?: VirtualDisk | undefined;
    jobs?: ObservedJob[];
  } = {},
): ObservedSnapshot {
  return {
    snapshot: parseDiskSnapshot({
      apiVersion: 'vdisk.dev/v1alpha1',
      metadata: {
        name: 's1',
        namespace: 'ns',
        uid: 'snap-uid',
        generation: 1,
        finalizers: [FINALIZER],
        ...(extra.deleting ? { deletionTimestamp: NOW } : {}),
      },
      spec: { virtualDiskName: 'd1', ...(extra.mode ? { mode: extra.mode } : {}) },
      status: extra.status,
    }),
    disk: 'disk' in extra ? extra.disk : readyDisk(),
    jobs: extra.jobs ?? [],
    settings: DEFAULT_POD_SETTINGS,
    now: NOW,
  };
}

function job(
  name: string,
  state: ObservedJob['state'],
  result?: ObservedJob['result'],
  ownerKind = 'DiskSnapshot',
): ObservedJob {
  return {
    name,
    operation: 'snapshot-create',
    ownerKind,
    state,
    result,
    failureMessage: undefined,
    isDeleting: false,
  };
}

describe('desiredSnapshot', () => {
  it('starts a snapshot-create Job on the disk PVC once the disk is Ready', () => {
    const result = desiredSnapshot(observed());
    const job0 = result.createJobs[0]!;
    expect(job0.metadata?.name).toBe('vds-s1-create');
    expect(job0.spec?.template.spec?.volumes?.[0]?.persistentVolumeClaim?.claimName).toBe('vdisk-d1');
    expect(parseImagerArgs(job0.spec!.template.spec!.containers[0]!.args!.slice(1))).toMatchObject({
      operation: 'snapshot-create',
      image: '/data/disk.qcow2',
      snapshot: 's1',
      mode: 'internal',
    });
    expect(result.status.phase).toBe('Creating');
  });

  it.each([
    ['the disk is missing', { disk: undefined }, 'does not exist'],
    [
      'the disk is attached read-write',
      { disk: readyDisk({ attach: { nodeName: 'node-1' } }) },
      'attached read-write on node node-1',
    ],
    [
      'another Job runs on the disk',
      { jobs: [job('vd-d1-resize-1', 'active', undefined, 'VirtualDisk')] },
      'vd-d1-resize-1',
    ],
  ])('waits when %s', (_label, extra, text) => {
    const result = desiredSnapshot(observed(extra));
    expect(result.createJobs).toEqual([]);
    const ready = result.status.conditions?.find((c) => c.type === 'Ready');
    expect(ready).toMatchObject({ status: 'False', reason: 'WaitingForDisk' });
    expect(ready?.message).toContain(text);
  });

  it('refuses an internal snapshot of a raw disk', () => {
    const result = desiredSnapshot(observed({ disk: readyDisk({ format: 'raw' }) }));
    expect(result.status.phase).toBe('Failed');
    expect(result.createJobs).toEqual([]);
  });

  it('becomes ready to use when the Job succeeded', () => {
    const result = desiredSnapshot(
      observed({
        jobs: [
          job('vds-s1-create', 'succeeded', {
            ok: true,
            operation: 'snapshot-create',
            snapshot: { name: 's1', creationTime: NOW },
            image: readyImage,
          }),
        ],
      }),
    );
    expect(result.status).toMatchObject({
      readyToUse: true,
      snapshotName: 's1',
      restoreSize: '1Gi',
      creationTime: NOW,
      phase: 'Ready',
    });
    expect(result.deleteJobs).toEqual(['vds-s1-create']);
  });

  it('does not delete the succeeded Job again while its first delete is in progress', () => {
    const succeeded = job('vds-s1-create', 'succeeded', {
      ok: true,
      operation: 'snapshot-create',
      snapshot: { name: 's1', creationTime: NOW },
      image: readyImage,
    });
    const result = desiredSnapshot(observed({ jobs: [{ ...succeeded, isDeleting: true }] }));
    expect(result.status).toMatchObject({ readyToUse: true, phase: 'Ready' });
    expect(result.deleteJobs).toEqual([]);
  });

  it('removes the snapshot from the image before dropping the finalizer', () => {
    const taken = { readyToUse: true, snapshotName: 's1' };
    const first = desiredSnapshot(observed({ deleting: true, status: taken }));
    expect(first.createJobs[0]?.metadata?.name).toBe('vds-s1-delete');
    expect(first.removeFinalizer).toBe(false);
    const done = desiredSnapshot(
      observed({
        deleting: true,
        status: taken,
        jobs: [job('vds-s1-delete', 'succeeded', { ok: true, operation: 'snapshot-delete' })],
      }),
    );
    expect(done.removeFinalizer).toBe(true);
    expect(done.deleteJobs).toEqual(['vds-s1-delete']);
  });

  it('drops the finalizer at once when the disk is gone', () => {
    const result = desiredSnapshot(
      observed({ deleting: true, status: { readyToUse: true, snapshotName: 's1' }, disk: undefined }),
    );
    expect(result.removeFinalizer).toBe(true);
    expect(result.createJobs).toEqual([]);
  });
});
