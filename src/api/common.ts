// Pieces shared by the vdisk.dev kinds: the API group/version, the standard metav1.Condition shape
// (api-conventions "Typical status properties"), object metadata as the controller reads it, and a
// string helper that always carries a maxLength (CEL cost estimation needs bounded strings).

import { z } from 'zod';
import { QUANTITY_PATTERN } from './quantity.ts';

export const API_GROUP = 'vdisk.dev';
export const API_VERSION = 'v1alpha1';
export const API_GROUP_VERSION = `${API_GROUP}/${API_VERSION}`;

/** A bounded string (every string in a CRD has a maxLength so CEL rules have a known cost). */
export function boundedString(maxLength: number, description: string): z.ZodString {
  return z.string().max(maxLength).meta({ description });
}

/** A DNS-1123 label, the shape of object names referenced from a spec (max 63 chars). */
export function objectName(description: string): z.ZodString {
  return z
    .string()
    .min(1)
    .max(63)
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/)
    .meta({ description });
}

/** A byte quantity string (`10Gi`); CEL checks it with isQuantity() as well. */
export function byteQuantity(description: string): z.ZodString {
  return z.string().min(1).max(32).regex(new RegExp(QUANTITY_PATTERN)).meta({ description });
}

/** metav1.Condition, as every Kubernetes API that follows the conventions has it. */
export const conditionSchema = z.object({
  type: z
    .string()
    .min(1)
    .max(316)
    .meta({ description: 'Condition type in CamelCase (Ready, Progressing, Attached)' }),
  status: z.enum(['True', 'False', 'Unknown']),
  observedGeneration: z
    .int()
    .min(0)
    .optional()
    .meta({ description: 'metadata.generation the condition was set for' }),
  lastTransitionTime: z.string().max(64).meta({ description: 'When status last changed (RFC 3339)' }),
  reason: z
    .string()
    .min(1)
    .max(1024)
    .regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/)
    .meta({ description: 'One CamelCase word for machines and kubectl get' }),
  message: z.string().max(32768).meta({ description: 'A sentence for humans (kubectl describe)' }),
});
export type Condition = z.infer<typeof conditionSchema>;

/** The conditions list: a map keyed by type, so server-side apply merges entries. */
export const conditionsSchema = z
  .array(conditionSchema)
  .max(16)
  .meta({
    'x-kubernetes-list-type': 'map',
    'x-kubernetes-list-map-keys': ['type'],
  });

/** The parts of ObjectMeta the controller reads (the apiserver owns the full schema). */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string | Date;
  deletionTimestamp?: string | Date;
  finalizers?: string[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
