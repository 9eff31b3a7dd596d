// What the imager reports: the image's info in the controller's shape (virtual/actual/cluster size,
// snapshot names) and the JSON result written to the termination message, kept under the kubelet's
// 4 KiB limit, plus the exit code policy (0 ok, 2 permanent failure, 1 worth one retry).

import { writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { IMAGER_PERMANENT_FAILURE_EXIT_CODE, type ImagerResult } from '../../api/imager.ts';
import { openImage } from '../../engine/open.ts';

/** The kubelet keeps at most 4096 bytes of a termination message. */
export const TERMINATION_MESSAGE_MAX_BYTES = 4096;
export const DEFAULT_TERMINATION_PATH = '/dev/termination-log';

export interface ImageReport {
  path: string;
  format: string;
  virtualSize: number;
  actualSize?: number;
  clusterSize?: number;
  snapshots?: string[];
  sha256?: string;
}

/** Opens the image read-only (with its backing chain) and summarises it; `path` is reported relative to /data. */
export async function describeImage(
  hostImagePath: string,
  format: string | undefined,
  reportedPath: string,
): Promise<ImageReport> {
  const device = await openImage(hostImagePath, {
    format,
    readOnly: true,
    allowBackingEscape: false,
    metadataOnly: true,
  });
  try {
    const info = await device.info();
    const snapshots = device.snapshots
      ? (await device.snapshots.list()).map((snapshot) => snapshot.name)
      : undefined;
    return {
      path: reportedPath || basename(hostImagePath),
      format: info.format,
      virtualSize: info.virtualSizeBytes,
      ...(info.actualSizeBytes !== undefined ? { actualSize: info.actualSizeBytes } : {}),
      ...(info.clusterSizeBytes !== undefined ? { clusterSize: info.clusterSizeBytes } : {}),
      ...(snapshots && snapshots.length > 0 ? { snapshots } : {}),
    };
  } finally {
    await device.close();
  }
}

/** Serialises a result, dropping snapshot names and cutting the message until it fits the limit. */
export function encodeResult(result: ImagerResult): string {
  let text = JSON.stringify(result);
  if (Buffer.byteLength(text) <= TERMINATION_MESSAGE_MAX_BYTES) return text;
  const trimmed = structuredClone(result) as ImagerResult;
  if (trimmed.ok && trimmed.image?.snapshots) {
    while (
      trimmed.image.snapshots.length > 0 &&
      Buffer.byteLength(JSON.stringify(trimmed)) > TERMINATION_MESSAGE_MAX_BYTES
    ) {
      trimmed.image.snapshots.pop();
    }
  }
  if (!trimmed.ok) trimmed.message = trimmed.message.slice(0, 2048);
  text = JSON.stringify(trimmed);
  return Buffer.byteLength(text) <= TERMINATION_MESSAGE_MAX_BYTES
    ? text
    : JSON.stringify({
        ...trimmed,
        ...(trimmed.ok ? { image: undefined } : { message: trimmed.message.slice(0, 512) }),
      });
}

/** Writes the result where the kubelet reads it; a missing folder (not in a pod) is not an error. */
export async function writeTerminationMessage(hostPath: string, text: string): Promise<void> {
  await writeFile(hostPath, text).catch(() => undefined);
}

/** VdiskError codes a retry cannot fix. */
const PERMANENT_CODES = new Set([
  'VDISK_EFORMAT',
  'VDISK_ECORRUPT',
  'VDISK_ENOTSUP',
  'VDISK_EINVAL',
  'VDISK_ENOENT',
  'VDISK_EPERM',
  'VDISK_ECHECKSUM',
  'VDISK_ENOSPC',
]);

/** 0 for success, 2 for a permanent failure (the Job fails at once), 1 otherwise (one retry). */
export function exitCodeFor(result: ImagerResult): number {
  if (result.ok) return 0;
  return PERMANENT_CODES.has(result.code) ? IMAGER_PERMANENT_FAILURE_EXIT_CODE : 1;
}
