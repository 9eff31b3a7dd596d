// CustomResourceDefinitions built from the zod schemas: structural OpenAPI v3 (apiextensions.k8s.io/v1,
// "Specifying a structural schema"), CEL x-kubernetes-validations, status subresource, printer columns.
// scripts/generate.ts writes them to crds/ and config/crd/; a unit test fails when those are stale.

import { z } from 'zod';
import { API_VERSION } from './common.ts';
import {
  diskSnapshotNames,
  diskSnapshotPrinterColumns,
  diskSnapshotSpecSchema,
  diskSnapshotStatusSchema,
} from './disk-snapshot.ts';
import {
  virtualDiskNames,
  virtualDiskPrinterColumns,
  virtualDiskSpecSchema,
  virtualDiskStatusSchema,
} from './virtual-disk.ts';

type JsonSchema = { [key: string]: unknown };

/** Keys JSON Schema emits that a structural OpenAPI v3 schema does not allow or need. */
const DROPPED_KEYS = new Set(['$schema', 'id', '$id', 'additionalProperties:false']);

/** Recursively rewrites zod's JSON Schema into the subset apiextensions accepts. */
function toStructural(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(toStructural);
  if (node === null || typeof node !== 'object') return node;
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node as JsonSchema)) {
    if (DROPPED_KEYS.has(key)) continue;
    if (key === 'additionalProperties' && value === false) continue;
    // Inside x-kubernetes-* values the content is data, not schema.
    out[key] = key.startsWith('x-kubernetes-') ? value : toStructural(value);
  }
  // An object with no declared properties keeps `type: object` only (structural: no empty maps needed).
  if (out.type === 'object' && out.properties && Object.keys(out.properties as JsonSchema).length === 0) {
    delete out.properties;
  }
  return out;
}

/** zod schema -> structural OpenAPI v3 schema (input shape: defaults present, optional fields optional). */
export function openApiSchemaOf(schema: z.ZodType): JsonSchema {
  const json = z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input', unrepresentable: 'throw' });
  return toStructural(json) as JsonSchema;
}

interface KindDefinition {
  names: {
    group: string;
    kind: string;
    listKind: string;
    plural: string;
    singular: string;
    shortNames: readonly string[];
    categories: readonly string[];
  };
  description: string;
  spec: z.ZodType;
  status: z.ZodType;
  columns: readonly { name: string; type: string; jsonPath: string }[];
}

function crdOf(definition: KindDefinition): JsonSchema {
  const { names } = definition;
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${names.plural}.${names.group}` },
    spec: {
      group: names.group,
      names: {
        kind: names.kind,
        listKind: names.listKind,
        plural: names.plural,
        singular: names.singular,
        shortNames: [...names.shortNames],
        categories: [...names.categories],
      },
      scope: 'Namespaced',
      versions: [
        {
          name: API_VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: definition.columns.map((column) => ({ ...column })),
          schema: {
            openAPIV3Schema: {
              description: definition.description,
              type: 'object',
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string' },
                kind: { type: 'string' },
                metadata: { type: 'object' },
                spec: openApiSchemaOf(definition.spec),
                status: openApiSchemaOf(definition.status),
              },
            },
          },
        },
      ],
    },
  };
}

/** The VirtualDisk CRD object. */
export function virtualDiskCrd(): JsonSchema {
  return crdOf({
    names: virtualDiskNames,
    description:
      'A virtual disk image (qcow2, raw, ...) on a PVC, created blank, imported, cloned or restored',
    spec: virtualDiskSpecSchema,
    status: virtualDiskStatusSchema,
    columns: virtualDiskPrinterColumns,
  });
}

/** The DiskSnapshot CRD object. */
export function diskSnapshotCrd(): JsonSchema {
  return crdOf({
    names: diskSnapshotNames,
    description: 'A point-in-time snapshot of a VirtualDisk (qcow2 internal, or an external backing file)',
    spec: diskSnapshotSpecSchema,
    status: diskSnapshotStatusSchema,
    columns: diskSnapshotPrinterColumns,
  });
}

/** Every CRD, keyed by the file name it is written to (`crds/<name>`). */
export function allCrds(): Record<string, JsonSchema> {
  return {
    'vdisk.dev_virtualdisks.yaml': virtualDiskCrd(),
    'vdisk.dev_disksnapshots.yaml': diskSnapshotCrd(),
  };
}
