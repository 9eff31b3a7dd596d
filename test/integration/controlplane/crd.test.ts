// The real kube-apiserver's CRD machinery, as the operator will use it: a CRD becomes Established and
// discoverable, its schema is enforced, status goes through the status subresource, watches deliver
// events, finalizers hold deletion, and a stale resourceVersion is refused with 409 and retried.
import {
  ApiextensionsV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
  PatchStrategy,
  setHeaderOptions,
  Watch,
} from '@kubernetes/client-node';
import { beforeAll, expect, it } from 'vitest';
import {
  controlPlane,
  createTestNamespace,
  describeWithControlPlane,
  eventually,
} from '../../controlplane/vitest.ts';

const GROUP = 'tests.vdisk.dev';
const VERSION = 'v1';
const PLURAL = 'widgets';
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

type Widget = KubernetesObject & { spec?: { sizeBytes?: number }; status?: { phase?: string } };

function httpStatus(err: unknown): number {
  return (err as { code?: number }).code ?? 0;
}

describeWithControlPlane('CRDs on the real apiserver', () => {
  let kubeConfig: KubeConfig;
  let custom: CustomObjectsApi;
  let namespace: string;

  /** Creates a Widget in the test namespace: apiVersion and kind filled in around its fields. */
  const createWidget = (fields: {
    metadata: Record<string, unknown>;
    spec: Record<string, unknown>;
    status?: Record<string, unknown>;
  }) =>
    custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'Widget', ...fields },
    });

  beforeAll(async () => {
    kubeConfig = controlPlane().kubeConfig();
    custom = kubeConfig.makeApiClient(CustomObjectsApi);
    namespace = await createTestNamespace(kubeConfig, 'crd');
    const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
    await extensions
      .createCustomResourceDefinition({
        body: {
          metadata: { name: `${PLURAL}.${GROUP}` },
          spec: {
            group: GROUP,
            scope: 'Namespaced',
            names: { plural: PLURAL, singular: 'widget', kind: 'Widget', listKind: 'WidgetList' },
            versions: [
              {
                name: VERSION,
                served: true,
                storage: true,
                subresources: { status: {} },
                schema: {
                  openAPIV3Schema: {
                    type: 'object',
                    properties: {
                      spec: {
                        type: 'object',
                        properties: { sizeBytes: { type: 'integer', minimum: 1 } },
                        required: ['sizeBytes'],
                      },
                      status: {
                        type: 'object',
                        properties: { phase: { type: 'string', _enum: ['Pending', 'Ready'] } },
                      },
                    },
                  },
                },
              },
            ],
          },
        },
      })
      .catch((err) => {
        if (httpStatus(err) !== 409) throw err;
      });
  });

  it('installs a CRD that becomes Established and discoverable', async () => {
    const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
    const crd = await eventually(
      'CRD Established',
      () => extensions.readCustomResourceDefinition({ name: `${PLURAL}.${GROUP}` }),
      (c) => c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True') === true,
    );
    expect(crd.status?.acceptedNames?.kind).toBe('Widget');
    await eventually(
      'group in discovery',
      () => custom.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL }),
      (list: { items?: unknown[] }) => Array.isArray(list.items),
    );
  });

  it('enforces the schema: a sizeBytes below the minimum is refused with 422', async () => {
    const error = await createWidget({
      metadata: { name: 'bad' },
      spec: { sizeBytes: 0 },
    }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(httpStatus(error)).toBe(422);
  });

  it('watches a custom object through create, status update and finalizer-held deletion', async () => {
    const events: Array<{ type: string; phase?: string; deleting: boolean }> = [];
    const watch = new Watch(kubeConfig);
    const request = await watch.watch(
      `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${PLURAL}`,
      {},
      (type: string, obj: Widget) => {
        events.push({
          type,
          phase: obj.status?.phase,
          deleting: obj.metadata?.deletionTimestamp !== undefined,
        });
      },
      () => undefined,
    );
    try {
      const name = 'w1';
      const ref = { group: GROUP, version: VERSION, namespace, plural: PLURAL, name };
      const created = (await createWidget({
        metadata: { name, finalizers: ['tests.vdisk.dev/cleanup'] },
        spec: { sizeBytes: 4096 },
        status: { phase: 'Ready' },
      })) as Widget;
      // The main resource ignores status when the status subresource is enabled.
      expect(created.status?.phase).toBeUndefined();

      const withStatus = (await custom.patchNamespacedCustomObjectStatus(
        { ...ref, body: { status: { phase: 'Ready' } } },
        MERGE_PATCH,
      )) as Widget;
      expect(withStatus.status?.phase).toBe('Ready');
      expect(withStatus.metadata?.generation).toBe(created.metadata?.generation);

      await custom.deleteNamespacedCustomObject(ref);
      const held = (await custom.getNamespacedCustomObject(ref)) as Widget;
      expect(held.metadata?.deletionTimestamp).toBeDefined();

      await custom.patchNamespacedCustomObject(
        { ...ref, body: { metadata: { finalizers: null } } },
        MERGE_PATCH,
      );
      await eventually(
        'object gone',
        () =>
          custom.getNamespacedCustomObject(ref).then(
            () => 200,
            (err: unknown) => httpStatus(err),
          ),
        (status) => status === 404,
      );
      await eventually(
        'DELETED event',
        async () => events,
        (list) => list.some((e) => e.type === 'DELETED'),
      );
      // Removing the last finalizer deletes at once: no MODIFIED for the finalizer removal itself.
      expect(events.map((e) => e.type)).toEqual(['ADDED', 'MODIFIED', 'MODIFIED', 'DELETED']);
      expect(events[1]?.phase).toBe('Ready');
      expect(events[2]?.deleting).toBe(true);
    } finally {
      request.abort();
    }
  });

  it('validates the status subresource against the schema too (enum)', async () => {
    const ref = { group: GROUP, version: VERSION, namespace, plural: PLURAL, name: 'w3' };
    await createWidget({
      metadata: { name: 'w3' },
      spec: { sizeBytes: 1 },
    });
    const status = await custom
      .patchNamespacedCustomObjectStatus({ ...ref, body: { status: { phase: 'Bogus' } } }, MERGE_PATCH)
      .then(
        () => 200,
        (err: unknown) => httpStatus(err),
      );
    expect(status).toBe(422);
  });

  it('refuses an update carrying a stale resourceVersion with 409, and the retry succeeds', async () => {
    const ref = { group: GROUP, version: VERSION, namespace, plural: PLURAL, name: 'w2' };
    const original = (await createWidget({
      metadata: { name: 'w2' },
      spec: { sizeBytes: 1 },
    })) as Widget;
    await custom.replaceNamespacedCustomObject({ ...ref, body: { ...original, spec: { sizeBytes: 2 } } });

    const stale = await custom
      .replaceNamespacedCustomObject({ ...ref, body: { ...original, spec: { sizeBytes: 3 } } })
      .then(
        () => 200,
        (err: unknown) => httpStatus(err),
      );
    expect(stale).toBe(409);

    let attempts = 0;
    let updated: Widget | undefined;
    while (updated === undefined && attempts < 5) {
      attempts++;
      const fresh = (await custom.getNamespacedCustomObject(ref)) as Widget;
      updated = (await custom
        .replaceNamespacedCustomObject({ ...ref, body: { ...fresh, spec: { sizeBytes: 3 } } })
        .catch((err: unknown) => {
          if (httpStatus(err) !== 409) throw err;
          return undefined;
        })) as Widget | undefined;
    }
    expect(updated?.spec?.sizeBytes).toBe(3);
    expect(Number(updated?.metadata?.resourceVersion)).toBeGreaterThan(
      Number(original.metadata?.resourceVersion),
    );
  });
});
