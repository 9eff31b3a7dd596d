// The local node's pure pod translation: supported images, argv, $(VAR) expansion, downward API, status.
import type { V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import {
  containerArgv,
  containerEnv,
  expandVariables,
  imageRepositoryName,
  unsupportedReason,
} from '../../controlplane/local-node/pod-spec.ts';
import { podStatusPatch } from '../../controlplane/local-node/pod-status.ts';
import { quantityBytes } from '../../controlplane/local-node/volumes.ts';

describe('local node pod translation', () => {
  it('recognises vdisk images by repository name', () => {
    expect(imageRepositoryName('vdisk:dev')).toBe('vdisk');
    expect(imageRepositoryName('ghcr.io/x/vdisk:0.1.0')).toBe('vdisk');
    expect(imageRepositoryName('localhost:5000/vdisk@sha256:abc')).toBe('vdisk');
    expect(imageRepositoryName('ghcr.io/x/vdisk-extra:1')).toBe('vdisk-extra');
    expect(unsupportedReason({ name: 'c', image: 'busybox', command: ['vdisk'] })).toMatch(
      /not a vdisk image/,
    );
    expect(unsupportedReason({ name: 'c', image: 'vdisk:dev', command: ['sh'] })).toMatch(/command\[0\]/);
    expect(unsupportedReason({ name: 'c', image: 'vdisk:dev' })).toBeDefined();
    expect(
      unsupportedReason({ name: 'c', image: 'vdisk:dev', command: ['vdisk-agent', 'imager'] }),
    ).toBeUndefined();
  });

  it('expands $(VAR) like the kubelet: known names, $$ escapes, unknown names kept', () => {
    expect(expandVariables('$(A)-$(B)-$$(A)-$(C)', { A: '1', B: '2' })).toBe('1-2-$(A)-$(C)');
  });

  it('builds argv from command[1..] and args', () => {
    const argv = containerArgv(
      { name: 'c', image: 'vdisk:dev', command: ['vdisk-agent', 'imager'], args: ['--disk=$(DISK)'] },
      { DISK: '/data/d.qcow2' },
      '/repo',
      '/usr/bin/node',
    );
    expect(argv).toEqual(['/usr/bin/node', '/repo/bin/vdisk-agent.mjs', 'imager', '--disk=/data/d.qcow2']);
  });

  it('resolves env in order with downward API and ConfigMap/Secret references', async () => {
    const pod: V1Pod = {
      metadata: { name: 'p', namespace: 'ns', uid: 'u', labels: { app: 'a' } },
      spec: { containers: [] },
    };
    const env = await containerEnv(
      pod,
      {
        name: 'c',
        envFrom: [{ prefix: 'CM_', configMapRef: { name: 'cm' } }],
        env: [
          { name: 'NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          { name: 'APP', valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
          { name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
          { name: 'TOKEN', valueFrom: { secretKeyRef: { name: 's', key: 'token' } } },
          { name: 'BOTH', value: '$(NAME)/$(APP)' },
        ],
      },
      async (kind): Promise<Record<string, string>> => (kind === 'ConfigMap' ? { x: '1' } : { token: 't0k' }),
      '127.0.0.1',
    );
    expect(env).toEqual({ CM_x: '1', NAME: 'p', APP: 'a', IP: '127.0.0.1', TOKEN: 't0k', BOTH: 'p/a' });
  });

  it('writes status with JSON-patch add ops and keeps the scheduler condition', () => {
    const pod: V1Pod = {
      status: { conditions: [{ type: 'PodScheduled', status: 'True' }] },
    };
    const ops = podStatusPatch(pod, {
      phase: 'Succeeded',
      hostIp: '127.0.0.1',
      startTime: new Date(0),
      initContainers: [],
      containers: [
        {
          name: 'main',
          image: 'vdisk:dev',
          restartCount: 0,
          current: {
            kind: 'terminated',
            exitCode: 0,
            reason: 'Completed',
            message: '{"ok":true}',
            startedAt: new Date(0),
            finishedAt: new Date(1000),
            pid: 42,
          },
        },
      ],
    });
    const byPath = new Map(ops.map((op) => [op.path, op.value]));
    expect(ops.every((op) => op.op === 'add')).toBe(true);
    expect(byPath.get('/status/phase')).toBe('Succeeded');
    const conditions = byPath.get('/status/conditions') as Array<{ type: string; status: string }>;
    expect(conditions.find((c) => c.type === 'PodScheduled')?.status).toBe('True');
    expect(conditions.find((c) => c.type === 'Ready')?.status).toBe('False');
    const [status] = byPath.get('/status/containerStatuses') as Array<{
      state: { terminated: { exitCode: number; message: string } };
    }>;
    expect(status?.state.terminated).toMatchObject({ exitCode: 0, message: '{"ok":true}' });
    expect(byPath.get('/status/podIP')).toBe('127.0.0.1');
  });
});

describe('storage quantities', () => {
  it('parses decimal and binary suffixes', () => {
    expect(quantityBytes('1Gi')).toBe(2 ** 30);
    expect(quantityBytes('1.5Mi')).toBe(1.5 * 2 ** 20);
    expect(quantityBytes('500M')).toBe(5e8);
    expect(quantityBytes('4096')).toBe(4096);
    expect(quantityBytes('1Xi')).toBeNaN();
    expect(quantityBytes(undefined)).toBeNaN();
  });
});
