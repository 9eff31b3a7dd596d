// The contract between the controller's attach pod and this agent: the argv buildAttachPod writes
// for a VirtualDisk (after the CRD's defaults) parses into the attach config that spec asks for.

import { describe, expect, it } from 'vitest';
import { parseAttachArgv } from '../../../../src/agent/attach/config.ts';
import { type VirtualDisk, virtualDiskSpecSchema } from '../../../../src/api/virtual-disk.ts';
import { buildAttachPod } from '../../../../src/controller/attach-pod.ts';
import { DEFAULT_POD_SETTINGS } from '../../../../src/controller/imager-job.ts';

const MiB = 1024 * 1024;

describe('attach pod argv -> agent config', () => {
  it('carries image, id, read-only, the layout (quantities, defaults) and mounts', () => {
    const spec = virtualDiskSpecSchema.parse({
      size: '4Gi',
      source: { blank: {} },
      layout: {
        table: 'gpt',
        partitions: [
          { size: '512Mi', type: 'efi', filesystem: 'vfat', label: 'EFI' },
          { filesystem: 'ext4' },
          { size: '1Gi' },
        ],
      },
      attach: {
        nodeName: 'node-1',
        readOnly: true,
        mounts: [{ partition: 2, path: '/var/lib/data', options: 'noatime,nodev' }],
      },
    });
    const disk: VirtualDisk = {
      apiVersion: 'vdisk.dev/v1alpha1',
      kind: 'VirtualDisk',
      metadata: { name: 'db', namespace: 'prod', uid: 'u1' },
      spec,
      status: { image: { path: 'db.qcow2', format: 'qcow2', virtualSize: 4096 * MiB } },
    };
    const pod = buildAttachPod(
      disk,
      'db-pvc',
      { apiVersion: 'vdisk.dev/v1alpha1', kind: 'VirtualDisk', name: 'db', uid: 'u1' },
      DEFAULT_POD_SETTINGS,
    );
    const [role, ...argv] = pod.spec?.containers[0]?.args ?? [];
    expect(role).toBe('attach');
    const config = parseAttachArgv(argv);
    expect(config).toMatchObject({
      imagePath: '/data/db.qcow2',
      format: 'qcow2',
      id: 'prod.db',
      readOnly: true,
      socketPath: '/run/vdisk/prod.db.sock',
      nbdServerArgs: ['-unix', '/run/vdisk/prod.db.sock'],
      stateDir: '/run/vdisk/attach',
      terminationMessagePath: '/dev/termination-log',
      mounts: [{ partition: 2, path: '/var/lib/data', options: 'noatime,nodev' }],
      layout: {
        table: 'gpt',
        partitions: [
          { sizeBytes: 512 * MiB, type: 'efi', filesystem: 'vfat', label: 'EFI' },
          { type: 'linux', filesystem: 'ext4' },
          { sizeBytes: 1024 * MiB, type: 'linux', filesystem: 'none' },
        ],
      },
    });
    // The socket and the state file live under the pod's /run/vdisk hostPath, so a restarted pod finds them.
    expect(pod.spec?.containers[0]?.volumeMounts).toContainEqual({ name: 'run', mountPath: '/run/vdisk' });
  });
});
