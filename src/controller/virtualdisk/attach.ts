// The attach side of a VirtualDisk's desired state: one attach pod while the disk is Ready and
// spec.attach is set, none otherwise (deleting it detaches); the Attached condition and
// status.attachment follow the pod. Pure; called by desired.ts for every outcome.

import type { V1Pod } from '@kubernetes/client-node';
import type { DiskPhase } from '../../api/virtual-disk.ts';
import { attachPodName, buildAttachPod } from '../attach-pod.ts';
import { ConditionType, Reason, type ReasonName } from '../conditions.ts';
import { claimNameFor } from '../naming.ts';
import type { DesiredDisk, ObservedDisk } from './desired.ts';

export type SetCondition = (
  type: string,
  status: 'True' | 'False' | 'Unknown',
  reason: ReasonName,
  message: string,
) => void;

function attachFailure(pod: V1Pod): string {
  const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
  const text = terminated?.message ?? pod.status?.message ?? pod.status?.reason ?? '';
  try {
    const report = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (report.error) return `${report.error.code ?? 'error'}: ${report.error.message ?? ''}`;
  } catch {
    // not the agent's JSON report: show the text as is
  }
  return text.slice(0, 1024) || `exit code ${terminated?.exitCode ?? 'unknown'}`;
}

/**
 * The attach pod while the disk is Ready and spec.attach is set; otherwise none (deleting it detaches:
 * the agent unmounts and flushes on SIGTERM). Sets the Attached condition and status.attachment.
 */
export function planAttach(
  observed: ObservedDisk,
  desired: DesiredDisk,
  phase: DiskPhase,
  set: SetCondition,
): void {
  const { disk } = observed;
  const attach = disk.spec.attach;
  const deleting = disk.metadata.deletionTimestamp !== undefined;
  const wanted =
    attach && phase === 'Ready' && desired.status.image && !deleting
      ? attachPodName({ ...disk, status: desired.status })
      : undefined;
  for (const pod of observed.attachPods) {
    const name = pod.metadata?.name ?? '';
    if (name !== wanted && !pod.metadata?.deletionTimestamp) desired.deletePods.push(name);
  }
  const current = wanted ? observed.attachPods.find((pod) => pod.metadata?.name === wanted) : undefined;
  if (!attach || !wanted) {
    if (observed.attachPods.length > 0) {
      set(
        ConditionType.Attached,
        'False',
        Reason.Detaching,
        `Detaching: attach pod ${observed.attachPods[0]?.metadata?.name} is stopping`,
      );
      return;
    }
    delete desired.status.attachment;
    delete desired.status.node;
    if (!attach) set(ConditionType.Attached, 'False', Reason.NotRequested, 'spec.attach is not set');
    else
      set(
        ConditionType.Attached,
        'False',
        Reason.WaitingForNode,
        `Waiting for the image before attaching on node ${attach.nodeName}`,
      );
    return;
  }
  // Snapshots and clones refuse a disk attached read-write from the moment its pod exists.
  desired.status.attachment = { nodeName: attach.nodeName, readOnly: attach.readOnly };
  desired.status.node = attach.nodeName;
  if (!current) {
    const owner = {
      apiVersion: disk.apiVersion,
      kind: 'VirtualDisk',
      name: disk.metadata.name,
      uid: disk.metadata.uid ?? '',
    };
    desired.createPods.push(
      buildAttachPod(
        { ...disk, status: desired.status },
        claimNameFor(disk.metadata.name),
        owner,
        observed.settings,
      ),
    );
    set(
      ConditionType.Attached,
      'False',
      Reason.WaitingForNode,
      `Started attach pod ${wanted} on node ${attach.nodeName}`,
    );
    return;
  }
  const podPhase = current.status?.phase;
  // The agent's report (device, partitions, mount points) arrives through its log while it runs.
  const report = observed.reports?.get(current.metadata?.uid)?.attach;
  if (report && podPhase === 'Running') {
    desired.status.attachment = {
      ...desired.status.attachment,
      device: report.device,
      ...(report.partitions.length > 0 ? { partitions: report.partitions } : {}),
    };
  }
  if (podPhase === 'Running') {
    set(
      ConditionType.Attached,
      'True',
      Reason.Mounted,
      report
        ? `Attached as ${report.device} on node ${attach.nodeName} by pod ${wanted}`
        : `Attach pod ${wanted} serves the image on node ${attach.nodeName}`,
    );
  } else if (podPhase === 'Failed' || podPhase === 'Succeeded') {
    set(
      ConditionType.Attached,
      'False',
      Reason.AttachFailed,
      `Attach pod ${wanted} on node ${attach.nodeName} ended: ${attachFailure(current)}`,
    );
  } else {
    set(
      ConditionType.Attached,
      'False',
      Reason.WaitingForNode,
      `Attach pod ${wanted} is ${podPhase ?? 'Pending'} on node ${attach.nodeName}`,
    );
  }
}
