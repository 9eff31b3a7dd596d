// What outlives one run of the attach agent on a node: its state file under /run/vdisk/attach (the
// device it bound and that binding's pid) and, after a crash, the device itself. A restarted agent
// finds what it left (state file, or a configured mount path still mounted from nbd) and undoes it.

import type { AttachConfig } from './config.ts';
import { isOnDevice, type NodeOps } from './node-ops.ts';

/** Polls for the kernel to drop a disconnected binding. */
export const MAPPING_POLLS = 10;
export const POLL_INTERVAL_MS = 200;

/** The node path of this attachment's state file. */
export function stateFile(config: AttachConfig): string {
  return `${config.stateDir}/${config.id}.json`;
}

/** The JSON the state file holds. */
export function stateFileContent(devicePath: string, pid: string, imagePath: string): string {
  return `${JSON.stringify({ device: devicePath, pid, imagePath })}\n`;
}

/**
 * Undoes what a previous run of this agent (same `id`) left on the node: mounts on its device,
 * kpartx mappings, the nbd binding. The device is found from the state file, or from a configured
 * mount path still mounted from an nbd device. Returns the device names cleaned.
 */
export async function cleanStale(
  config: AttachConfig,
  node: NodeOps,
  sleep: (ms: number) => Promise<void>,
): Promise<string[]> {
  // Device name -> the pid its binding had when this agent made it (undefined: found by a mount path).
  const candidates = new Map<string, string | undefined>();
  const state = await node.readFile(stateFile(config));
  if (state !== undefined) {
    try {
      const parsed = JSON.parse(state) as { device?: unknown; pid?: unknown };
      if (typeof parsed.device === 'string' && /^\/dev\/nbd\d+$/.test(parsed.device)) {
        candidates.set(
          parsed.device.slice(5),
          typeof parsed.pid === 'string' && parsed.pid !== '' ? parsed.pid : undefined,
        );
      }
    } catch {
      // A torn state file: the mount scan below still finds the device.
    }
  }
  let mounts = await node.mounts();
  for (const mount of config.mounts) {
    const entry = mounts.find((candidate) => candidate.target === mount.path);
    const match = entry && /^\/dev\/(?:mapper\/)?(nbd\d+)(?:p\d+)?$/.exec(entry.source);
    if (match?.[1]) candidates.set(match[1], undefined);
  }
  const cleaned: string[] = [];
  for (const [name, recordedPid] of candidates) {
    const onDevice = mounts.filter((mount) => isOnDevice(mount.source, name)).reverse();
    const pid = (await node.readFile(`/sys/block/${name}/pid`))?.trim() ?? '';
    // Bound since by another client (our binding went away and someone took the device): not ours.
    if (recordedPid !== undefined && pid !== '' && pid !== recordedPid && onDevice.length === 0) continue;
    const bound = pid !== '';
    if (onDevice.length === 0 && !bound) continue;
    for (const mount of onDevice) {
      if ((await node.runner.run('umount', [mount.target])).exitCode !== 0)
        await node.check('umount', ['-l', mount.target]);
    }
    await node.runner.run('kpartx', ['-d', `/dev/${name}`]);
    if (bound) await disconnect(node, name, sleep);
    cleaned.push(`/dev/${name}`);
    mounts = await node.mounts();
  }
  await node.runner.run('rm', ['-f', stateFile(config)]);
  return cleaned;
}

/** `nbd-client -d`, then waits (bounded) for the binding to go. */
export async function disconnect(
  node: NodeOps,
  name: string,
  sleep: (ms: number) => Promise<void>,
): Promise<void> {
  await node.check('nbd-client', ['-d', `/dev/${name}`]);
  for (let poll = 0; poll < MAPPING_POLLS && (await node.isNbdBound(name)); poll++)
    await sleep(POLL_INTERVAL_MS);
}
