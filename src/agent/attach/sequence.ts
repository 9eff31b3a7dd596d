// The attach and detach sequences (DESIGN.md "Pods the controller launches", attach): open the image,
// write the layout on first use, serve it, bind a free /dev/nbdN, map partitions with kpartx, make
// filesystems, mount; and the reverse. Every node step goes through the CommandRunner; each step that
// succeeded is undone when a later one fails, and a restarted agent cleans what its last run left.

import type { BlockDevice } from '../../engine/block-device.ts';
import type { NbdLogger } from '../../nbd/transmission.ts';
import { openImage } from '../../engine/open.ts';
import {
  applyLayout,
  type PartitionLayout,
  type PartitionTable,
  readPartitionTable,
} from '../../engine/partition/index.ts';
import type { AttachConfig, MountSpec } from './config.ts';
import { AttachStateError, NodeCommandError } from './errors.ts';
import { NodeOps, partitionMappingName } from './node-ops.ts';
import {
  cleanStale,
  disconnect,
  MAPPING_POLLS,
  POLL_INTERVAL_MS,
  stateFile,
  stateFileContent,
} from './recovery.ts';
import type { CommandRunner } from './runner.ts';
import type { RunningServer, ServeFn } from './serve.ts';

export interface AttachDeps {
  runner: CommandRunner;
  serve: ServeFn;
  /** Substitute for the engine's openImage (tests). */
  open?: typeof openImage;
  /** Waits between polls (tests pass a no-op); milliseconds. */
  sleep?: (ms: number) => Promise<void>;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Passed on to the NBD server. */
  serverLog?: NbdLogger;
}

export interface PartitionReport {
  number: number;
  /** Device-mapper name (`nbd0p1`). */
  name: string;
  path: string;
  /** Bytes from the start of the disk. */
  start: number;
  size: number;
  filesystem?: string;
  mountPath?: string;
}

export interface AttachReport {
  phase: 'Attached' | 'Detached';
  id: string;
  device: string;
  readOnly: boolean;
  table: 'mbr' | 'gpt' | null;
  layoutApplied: boolean;
  filesystemsCreated: Array<{ partition: number; filesystem: string }>;
  /** Devices a previous run of this agent left bound, cleaned before attaching. */
  recovered: string[];
  partitions: PartitionReport[];
  mounts: Array<{ partition: number; path: string; source: string; options: string }>;
}

export interface Attachment {
  config: AttachConfig;
  report: AttachReport;
  device: BlockDevice;
  server: RunningServer;
  nbdName: string;
  mapped: boolean;
  mountedPaths: string[];
}

/** Tries this many free devices when another client grabs one between the scan and nbd-client. */
const BIND_ATTEMPTS = 3;

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Partition numbers (as Linux numbers them) of a layout's entries, in order. */
export function layoutPartitionNumbers(layout: PartitionLayout): number[] {
  const useLogicals = layout.table === 'mbr' && layout.partitions.length > 4;
  return layout.partitions.map((_, index) => (useLogicals && index >= 3 ? 5 + index - 3 : index + 1));
}

/** mkfs argv for a filesystem; undefined for `none`. */
export function mkfsCommand(
  filesystem: string,
  devicePath: string,
  label: string | undefined,
): [string, string[]] | undefined {
  switch (filesystem) {
    case 'ext4':
      return ['mkfs.ext4', ['-F', '-q', ...(label ? ['-L', label] : []), devicePath]];
    case 'xfs':
      return ['mkfs.xfs', ['-f', '-q', ...(label ? ['-L', label] : []), devicePath]];
    case 'btrfs':
      return ['mkfs.btrfs', ['-f', '-q', ...(label ? ['-L', label] : []), devicePath]];
    case 'vfat':
      return ['mkfs.vfat', [...(label ? ['-n', label.toUpperCase().slice(0, 11)] : []), devicePath]];
    case 'swap':
      return ['mkswap', [...(label ? ['-L', label] : []), devicePath]];
    default:
      return undefined;
  }
}

async function bindNbd(config: AttachConfig, node: NodeOps): Promise<string> {
  let lastError: unknown;
  for (let attempt = 0; attempt < BIND_ATTEMPTS; attempt++) {
    const [name] = await node.freeNbdDevices();
    if (!name)
      throw new AttachStateError({ message: 'no free /dev/nbd* device (every /sys/block/nbdN/pid is set)' });
    const args = [
      ...config.nbdServerArgs,
      `/dev/${name}`,
      '-N',
      config.exportName,
      '-b',
      '512',
      '-t',
      String(config.nbdTimeoutSeconds),
      ...(config.readOnly ? ['-readonly'] : []),
    ];
    const result = await node.runner.run('nbd-client', args);
    if (result.exitCode === 0) return name;
    lastError = new NodeCommandError({
      command: 'nbd-client',
      args,
      exitCode: result.exitCode,
      stderr: result.stderr || result.stdout,
    });
  }
  throw lastError;
}

async function mountOne(
  node: NodeOps,
  attachment: Attachment,
  mount: MountSpec,
  source: string,
): Promise<string> {
  const options = [...(mount.options ? mount.options.split(',') : [])];
  if (attachment.config.readOnly && !options.includes('ro')) options.push('ro');
  await node.check('mkdir', ['-p', mount.path]);
  await node.check('mount', [...(options.length > 0 ? ['-o', options.join(',')] : []), source, mount.path]);
  attachment.mountedPaths.push(mount.path);
  return options.join(',');
}

/**
 * Runs the whole attach sequence and returns the live attachment (detach() undoes it). On failure
 * every completed step is undone before the error is rethrown.
 */
export async function attach(config: AttachConfig, deps: AttachDeps): Promise<Attachment> {
  const node = new NodeOps(deps.runner);
  const sleep = deps.sleep ?? defaultSleep;
  const log = deps.log ?? (() => undefined);
  const recovered = await cleanStale(config, node, sleep);
  if (recovered.length > 0) log('Cleaned devices left by a previous run', { devices: recovered });
  const open = deps.open ?? openImage;
  const device = await open(config.imagePath, {
    readOnly: config.readOnly,
    ...(config.format ? { format: config.format } : {}),
  });
  const attachment: Attachment = {
    config,
    device,
    server: { close: async () => undefined },
    nbdName: '',
    mapped: false,
    mountedPaths: [],
    report: {
      phase: 'Attached',
      id: config.id,
      device: '',
      readOnly: config.readOnly,
      table: null,
      layoutApplied: false,
      filesystemsCreated: [],
      recovered,
      partitions: [],
      mounts: [],
    },
  };
  try {
    let table: PartitionTable | undefined = await readPartitionTable(device, config.imagePath);
    if (!table && config.layout) {
      if (config.readOnly)
        throw new AttachStateError({
          message: 'the image has no partition table and is attached read-only: the layout cannot be applied',
        });
      table = await applyLayout(device, config.layout, config.imagePath);
      attachment.report.layoutApplied = true;
      log('Applied partition layout', { table: table.table, partitions: table.partitions.length });
    }
    attachment.report.table = table?.table ?? null;
    attachment.server = await deps.serve({
      device,
      imagePath: config.imagePath,
      format: device.formatName,
      readOnly: config.readOnly,
      socketPath: config.socketPath,
      exportName: config.exportName,
      ...(deps.serverLog ? { log: deps.serverLog } : {}),
    });
    attachment.nbdName = await bindNbd(config, node);
    const devicePath = `/dev/${attachment.nbdName}`;
    attachment.report.device = devicePath;
    // The binding's pid tells a restarted agent whether the device is still the one it bound.
    const pid = (await node.readFile(`/sys/block/${attachment.nbdName}/pid`))?.trim() ?? '';
    await node.check('mkdir', ['-p', config.stateDir]);
    await node.check('tee', [stateFile(config)], {
      input: stateFileContent(devicePath, pid, config.imagePath),
    });
    log('Bound nbd device', { device: devicePath });

    const partitions = (table?.partitions ?? []).filter((partition) => partition.kind !== 'extended');
    if (partitions.length > 0) {
      await node.check('kpartx', ['-a', '-s', ...(config.readOnly ? ['-r'] : []), devicePath]);
      attachment.mapped = true;
      for (const partition of partitions) {
        const path = `/dev/mapper/${partitionMappingName(attachment.nbdName, partition.number)}`;
        let present = await node.isBlockDevice(path);
        for (let poll = 1; !present && poll < MAPPING_POLLS; poll++) {
          await sleep(POLL_INTERVAL_MS);
          present = await node.isBlockDevice(path);
        }
        // kpartx -a exits 0 when it finds no table it understands: check each mapping exists.
        if (!present)
          throw new AttachStateError({
            device: devicePath,
            message: `kpartx did not map partition ${partition.number} (${path} is missing)`,
          });
        attachment.report.partitions.push({
          number: partition.number,
          name: partitionMappingName(attachment.nbdName, partition.number),
          path,
          start: partition.startBytes,
          size: partition.sizeBytes,
        });
      }
    }
    const wanted = config.layout ? layoutPartitionNumbers(config.layout) : [];
    for (const [index, number] of wanted.entries()) {
      const spec = config.layout?.partitions[index];
      const report = attachment.report.partitions.find((partition) => partition.number === number);
      if (!spec?.filesystem || spec.filesystem === 'none' || !report) continue;
      report.filesystem = spec.filesystem;
      if (config.readOnly) continue;
      // Only a partition with no filesystem signature is formatted: a later attach, or one after a
      // crash between layout and mkfs, never wipes data.
      // blkid exits 0 with no TYPE when it finds only partition-entry data, 2 when it finds nothing,
      // and 8 when signatures conflict: that last one is left for a person to sort out.
      const probeArgs = ['-p', '-o', 'value', '-s', 'TYPE', report.path];
      const probe = await deps.runner.run('blkid', probeArgs);
      if (probe.exitCode !== 0 && probe.exitCode !== 2) {
        throw new NodeCommandError({
          command: 'blkid',
          args: probeArgs,
          exitCode: probe.exitCode,
          stderr: probe.stderr || probe.stdout,
        });
      }
      if (probe.stdout.trim() !== '') continue;
      const command = mkfsCommand(spec.filesystem, report.path, spec.label);
      if (!command) continue;
      await node.check(command[0], command[1], { timeoutMs: 600_000 });
      attachment.report.filesystemsCreated.push({ partition: number, filesystem: spec.filesystem });
      log('Created filesystem', { partition: number, filesystem: spec.filesystem });
    }
    for (const mount of config.mounts) {
      const report = attachment.report.partitions.find((partition) => partition.number === mount.partition);
      if (!report)
        throw new AttachStateError({
          device: devicePath,
          message: `mount of partition ${mount.partition} at ${mount.path}: the disk has no such partition`,
        });
      const options = await mountOne(node, attachment, mount, report.path);
      report.mountPath = mount.path;
      attachment.report.mounts.push({
        partition: mount.partition,
        path: mount.path,
        source: report.path,
        options,
      });
    }
    log('Attached', { device: devicePath, mounts: attachment.mountedPaths.length });
    return attachment;
  } catch (err) {
    await detach(attachment, deps).catch((cleanupError: unknown) =>
      log('Cleanup after a failed attach failed', { err: cleanupError }),
    );
    throw err;
  }
}

/**
 * Unmounts, removes the kpartx mappings, disconnects the nbd device, stops the server, flushes and
 * closes the image. Every step runs even when an earlier one fails; the first error is rethrown.
 */
export async function detach(attachment: Attachment, deps: AttachDeps): Promise<AttachReport> {
  const node = new NodeOps(deps.runner);
  const sleep = deps.sleep ?? defaultSleep;
  const errors: unknown[] = [];
  const step = async (action: () => Promise<unknown>) => {
    try {
      await action();
    } catch (err) {
      errors.push(err);
    }
  };
  for (const path of [...attachment.mountedPaths].reverse()) {
    await step(async () => {
      if ((await deps.runner.run('umount', [path])).exitCode !== 0) await node.check('umount', ['-l', path]);
    });
  }
  attachment.mountedPaths = [];
  const devicePath = `/dev/${attachment.nbdName}`;
  if (attachment.mapped) {
    await step(async () => {
      if ((await deps.runner.run('kpartx', ['-d', devicePath])).exitCode !== 0) {
        await sleep(500);
        await node.check('kpartx', ['-d', devicePath]);
      }
    });
    attachment.mapped = false;
  }
  if (attachment.nbdName) {
    await step(() => disconnect(node, attachment.nbdName, sleep));
    await step(() => deps.runner.run('rm', ['-f', stateFile(attachment.config)]));
  }
  await step(() => attachment.server.close());
  await step(async () => {
    if (!attachment.device.isReadOnly) await attachment.device.flush();
  });
  await step(() => attachment.device.close());
  attachment.report.phase = 'Detached';
  if (errors.length > 0) throw errors[0];
  return attachment.report;
}
