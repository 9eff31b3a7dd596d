// An imager Job as reconcilers see it: its state and the result its pod wrote to the termination
// message (batch/v1 Job conditions Complete/Failed; core/v1 ContainerStateTerminated.message).

import type { V1Job, V1Pod } from '@kubernetes/client-node';
import { type ImagerResult, parseImagerResult } from '../api/imager.ts';
import { LABEL_OPERATION, LABEL_OWNER_KIND } from './naming.ts';

export type JobState = 'active' | 'succeeded' | 'failed';

export interface ObservedJob {
  name: string;
  operation: string;
  ownerKind: string;
  state: JobState;
  /** The imager's JSON result, from the newest terminated pod. */
  result: ImagerResult | undefined;
  /** Why the Job failed when no result says (deadline exceeded, pod failure text). */
  failureMessage: string | undefined;
  isDeleting: boolean;
  /** The newest progress (percent) a running pod of the Job reported in its log, if any. */
  progress?: number;
}

function jobState(job: V1Job): JobState {
  const conditions = job.status?.conditions ?? [];
  const isTrue = (type: string) =>
    conditions.some((condition) => condition.type === type && condition.status === 'True');
  if (isTrue('Complete') || isTrue('SuccessCriteriaMet')) return 'succeeded';
  if (isTrue('Failed') || isTrue('FailureTarget')) return 'failed';
  return 'active';
}

function timeOf(value: Date | string | undefined): number {
  if (value === undefined) return 0;
  return new Date(value).getTime();
}

function progressField(
  pods: readonly V1Pod[],
  progressOf: (pod: V1Pod) => number | undefined,
): { progress?: number } {
  let progress: number | undefined;
  for (const pod of pods) {
    const value = progressOf(pod);
    if (value !== undefined && (progress === undefined || value > progress)) progress = value;
  }
  return progress === undefined ? {} : { progress };
}

/** Reduces a Job and the pods it owns to what reconcilers need. */
export function observeJob(
  job: V1Job,
  pods: readonly V1Pod[],
  progressOf: (pod: V1Pod) => number | undefined = () => undefined,
): ObservedJob {
  const name = job.metadata?.name ?? '';
  const uid = job.metadata?.uid;
  const own = pods.filter((pod) =>
    uid
      ? pod.metadata?.ownerReferences?.some((owner) => owner.uid === uid)
      : pod.metadata?.labels?.['job-name'] === name,
  );
  let newest: { at: number; message: string | undefined; reason: string | undefined } | undefined;
  for (const pod of own) {
    for (const status of pod.status?.containerStatuses ?? []) {
      const terminated = status.state?.terminated;
      if (!terminated) continue;
      const at = timeOf(terminated.finishedAt);
      if (!newest || at >= newest.at) newest = { at, message: terminated.message, reason: terminated.reason };
    }
  }
  const state = jobState(job);
  const failedCondition = job.status?.conditions?.find(
    (condition) => condition.type === 'Failed' && condition.status === 'True',
  );
  return {
    name,
    operation: job.metadata?.labels?.[LABEL_OPERATION] ?? '',
    ownerKind: job.metadata?.labels?.[LABEL_OWNER_KIND] ?? '',
    state,
    result: parseImagerResult(newest?.message),
    failureMessage:
      state === 'failed'
        ? [failedCondition?.reason, failedCondition?.message, newest?.message?.slice(0, 512)]
            .filter(Boolean)
            .join(': ')
        : undefined,
    isDeleting: job.metadata?.deletionTimestamp !== undefined,
    ...progressField(own, progressOf),
  };
}
