// Every condition type and reason the controller sets (STYLE.md "Controller" table), also used as
// Event reasons. Reasons are one CamelCase word; messages are sentences with specifics.
// setCondition keeps lastTransitionTime when the status does not change (api-conventions).

import type { Condition } from '../api/common.ts';

export const ConditionType = {
  Ready: 'Ready',
  Progressing: 'Progressing',
  Attached: 'Attached',
} as const;

export const Reason = {
  // VirtualDisk Ready
  ImageReady: 'ImageReady',
  Provisioning: 'Provisioning',
  Importing: 'Importing',
  ChecksumMismatch: 'ChecksumMismatch',
  ImportFailed: 'ImportFailed',
  ImagerFailed: 'ImagerFailed',
  WaitingForSource: 'WaitingForSource',
  Deleting: 'Deleting',
  // VirtualDisk Progressing
  Creating: 'Creating',
  Cloning: 'Cloning',
  Resizing: 'Resizing',
  Restoring: 'Restoring',
  Idle: 'Idle',
  // VirtualDisk Attached
  Mounted: 'Mounted',
  WaitingForNode: 'WaitingForNode',
  AttachFailed: 'AttachFailed',
  Detaching: 'Detaching',
  NotRequested: 'NotRequested',
  // DiskSnapshot Ready
  SnapshotTaken: 'SnapshotTaken',
  WaitingForDisk: 'WaitingForDisk',
  SnapshotFailed: 'SnapshotFailed',
  // Events only
  CreatedClaim: 'CreatedClaim',
  CreatedJob: 'CreatedJob',
  ExpandedClaim: 'ExpandedClaim',
} as const;
export type ReasonName = (typeof Reason)[keyof typeof Reason];

export interface ConditionInput {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: ReasonName;
  message: string;
}

/**
 * Returns `conditions` with `next` set for `observedGeneration`; the transition time moves only
 * when the status changes. `now` is an RFC 3339 timestamp (injected so desired.ts stays pure).
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  next: ConditionInput,
  observedGeneration: number,
  now: string,
): Condition[] {
  const list = [...(conditions ?? [])];
  const index = list.findIndex((condition) => condition.type === next.type);
  const previous = index >= 0 ? list[index] : undefined;
  const condition: Condition = {
    type: next.type,
    status: next.status,
    reason: next.reason,
    message: next.message.slice(0, 32768),
    observedGeneration,
    lastTransitionTime: previous && previous.status === next.status ? previous.lastTransitionTime : now,
  };
  if (index >= 0) list[index] = condition;
  else list.push(condition);
  return list;
}

/** The condition of `type`, if present. */
export function findCondition(
  conditions: readonly Condition[] | undefined,
  type: string,
): Condition | undefined {
  return conditions?.find((condition) => condition.type === type);
}
