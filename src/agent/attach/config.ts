// The attach agent's configuration: `vdisk-agent attach` flags (or one --config JSON object with the
// same fields), validated with bounded sizes. The layout and mounts mirror VirtualDisk spec.layout
// and spec.attach.mounts; sizes are byte counts or Kubernetes quantities (`1Gi`; `500M` is 500*10^6),
// then qemu spellings the quantity grammar lacks (`1g` is 2^30).

import { parseArgs } from 'node:util';
import { parseQuantityBytes } from '../../api/quantity.ts';
import { InvalidOptionError } from '../../engine/errors.ts';
import type { LayoutPartition, PartitionLayout } from '../../engine/partition/index.ts';
import { parseSize } from '../../engine/size.ts';

export const FILESYSTEMS = ['ext4', 'xfs', 'vfat', 'btrfs', 'swap', 'none'] as const;
export type Filesystem = (typeof FILESYSTEMS)[number];

export interface MountSpec {
  /** 1-based partition number as Linux and kpartx number it. */
  partition: number;
  path: string;
  options?: string;
}

export interface AttachConfig {
  imagePath: string;
  format?: string;
  readOnly: boolean;
  /** Names this attachment on the node (state file); the VirtualDisk's namespace/name in a cluster. */
  id: string;
  socketPath: string;
  exportName: string;
  /** nbd-client's server arguments; default `-unix <socketPath>`. */
  nbdServerArgs: string[];
  /** nbd-client -t: seconds before a request to a silent server fails. */
  nbdTimeoutSeconds: number;
  layout?: PartitionLayout;
  mounts: MountSpec[];
  /** Node folder for the state file (tmpfs /run: it does not outlive a reboot, nor does the nbd binding). */
  stateDir: string;
  terminationMessagePath?: string;
}

const MAX_MOUNTS = 16;

function invalid(option: string, value: unknown, message: string): InvalidOptionError {
  return new InvalidOptionError({ option, value, message });
}

function sizeOf(value: unknown, option: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value > 0) return value;
  if (typeof value === 'string') return parseQuantityBytes(value) ?? parseSize(value, option);
  throw invalid(option, value, `${option} must be a byte count or a quantity like 1Gi`);
}

/** Validates a layout object (from JSON); throws InvalidOptionError. */
export function parseLayout(value: unknown): PartitionLayout {
  const layout = value as { table?: unknown; partitions?: unknown; diskId?: unknown };
  if (!layout || (layout.table !== 'mbr' && layout.table !== 'gpt'))
    throw invalid('layout.table', layout?.table, 'layout.table must be mbr or gpt');
  if (!Array.isArray(layout.partitions) || layout.partitions.length < 1 || layout.partitions.length > 128) {
    throw invalid('layout.partitions', layout.partitions, 'layout.partitions must list 1 to 128 partitions');
  }
  const partitions = layout.partitions.map((raw: Record<string, unknown>, index): LayoutPartition => {
    const option = `layout.partitions[${index}]`;
    const filesystem = raw.filesystem ?? 'none';
    if (!FILESYSTEMS.includes(filesystem as Filesystem))
      throw invalid(
        `${option}.filesystem`,
        filesystem,
        `filesystem must be one of ${FILESYSTEMS.join(', ')}`,
      );
    for (const key of ['type', 'label'] as const) {
      if (raw[key] !== undefined && (typeof raw[key] !== 'string' || (raw[key] as string).length > 64))
        throw invalid(`${option}.${key}`, raw[key], `${key} must be a short string`);
    }
    const sizeBytes = sizeOf(raw.sizeBytes ?? raw.size, `${option}.size`);
    return {
      ...(sizeBytes === undefined ? {} : { sizeBytes }),
      ...(raw.type === undefined ? {} : { type: raw.type as string }),
      ...(raw.label === undefined ? {} : { label: raw.label as string }),
      ...(raw.bootable === true ? { bootable: true } : {}),
      filesystem: filesystem as string,
    };
  });
  return {
    table: layout.table,
    partitions,
    ...(typeof layout.diskId === 'string' ? { diskId: layout.diskId } : {}),
  };
}

/** `N:/path[:options]` -> MountSpec. */
export function parseMountFlag(text: string): MountSpec {
  const match = /^(\d{1,3}):(\/[^:]*)(?::(.+))?$/.exec(text);
  if (!match) throw invalid('--mount', text, `--mount must be PARTITION:/PATH[:OPTIONS], not '${text}'`);
  return { partition: Number(match[1]), path: match[2] ?? '/', ...(match[3] ? { options: match[3] } : {}) };
}

function parseMount(value: unknown, index: number): MountSpec {
  const mount = value as { partition?: unknown; path?: unknown; options?: unknown };
  if (
    !Number.isInteger(mount?.partition) ||
    (mount.partition as number) < 1 ||
    (mount.partition as number) > 128
  ) {
    throw invalid(`mounts[${index}].partition`, mount?.partition, 'partition must be 1..128');
  }
  if (
    typeof mount.path !== 'string' ||
    !mount.path.startsWith('/') ||
    mount.path.length > 1024 ||
    mount.path.includes('\0')
  ) {
    throw invalid(`mounts[${index}].path`, mount.path, 'path must be absolute');
  }
  if (mount.options !== undefined && (typeof mount.options !== 'string' || mount.options.length > 512)) {
    throw invalid(`mounts[${index}].options`, mount.options, 'options must be a string');
  }
  return {
    partition: mount.partition as number,
    path: mount.path,
    ...(mount.options ? { options: mount.options as string } : {}),
  };
}

export const ATTACH_USAGE = `usage: vdisk-agent attach --image PATH [-f FMT] [--read-only] [--id NAME]
  [--socket PATH] [--export NAME] [--connect HOST:PORT] [--timeout-seconds N]
  [--layout JSON] [--mount N:/PATH[:OPTS]]... [--state-dir DIR] [--termination-log PATH]
  [--config JSON]    (all of the above as one JSON object: imagePath, format, readOnly, id, ...)
`;

/** Parses `vdisk-agent attach` argv; throws InvalidOptionError. */
export function parseAttachArgv(argv: string[]): AttachConfig {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' },
        image: { type: 'string' },
        format: { type: 'string', short: 'f' },
        'read-only': { type: 'boolean' },
        id: { type: 'string' },
        socket: { type: 'string' },
        export: { type: 'string' },
        connect: { type: 'string' },
        'timeout-seconds': { type: 'string' },
        layout: { type: 'string' },
        mount: { type: 'string', multiple: true },
        'state-dir': { type: 'string' },
        'termination-log': { type: 'string' },
      },
    }));
  } catch (err) {
    throw invalid('argv', argv, (err as Error).message);
  }
  let base: Record<string, unknown> = {};
  if (typeof values.config === 'string') {
    try {
      base = JSON.parse(values.config) as Record<string, unknown>;
    } catch (err) {
      throw invalid('--config', values.config, `--config is not JSON: ${(err as Error).message}`);
    }
  }
  const text = (flag: string, key: string): string | undefined =>
    (values[flag] as string | undefined) ?? (base[key] as string | undefined);
  const imagePath = text('image', 'imagePath');
  if (!imagePath) throw invalid('--image', imagePath, '--image is required');
  const id = text('id', 'id') ?? imagePath.replace(/[^A-Za-z0-9._-]+/g, '_').slice(-100);
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(id)) throw invalid('--id', id, '--id must be 1-128 of [A-Za-z0-9._-]');
  const socketPath = text('socket', 'socketPath') ?? `/run/vdisk/${id}.sock`;
  const connect = text('connect', 'connect');
  let nbdServerArgs = ['-unix', socketPath];
  if (connect) {
    const match = /^([A-Za-z0-9.:-]+):(\d{1,5})$/.exec(connect);
    if (!match) throw invalid('--connect', connect, '--connect must be HOST:PORT');
    nbdServerArgs = [match[1] ?? '', match[2] ?? ''];
  }
  const timeoutText = text('timeout-seconds', 'nbdTimeoutSeconds');
  const nbdTimeoutSeconds = timeoutText === undefined ? 30 : Number(timeoutText);
  if (!Number.isInteger(nbdTimeoutSeconds) || nbdTimeoutSeconds < 1 || nbdTimeoutSeconds > 86_400) {
    throw invalid('--timeout-seconds', timeoutText, '--timeout-seconds must be 1..86400');
  }
  const layoutText = values.layout as string | undefined;
  let layoutValue: unknown = base.layout;
  if (layoutText) {
    try {
      layoutValue = JSON.parse(layoutText);
    } catch (err) {
      throw invalid('--layout', layoutText, `--layout is not JSON: ${(err as Error).message}`);
    }
  }
  const mountFlags = (values.mount as string[] | undefined) ?? [];
  const mounts =
    mountFlags.length > 0
      ? mountFlags.map(parseMountFlag)
      : ((base.mounts as unknown[] | undefined) ?? []).map(parseMount);
  if (mounts.length > MAX_MOUNTS) throw invalid('--mount', mounts.length, `at most ${MAX_MOUNTS} mounts`);
  const format = text('format', 'format');
  const terminationMessagePath = text('termination-log', 'terminationMessagePath');
  return {
    imagePath,
    ...(format ? { format } : {}),
    readOnly: values['read-only'] === true || base.readOnly === true,
    id,
    socketPath,
    exportName: text('export', 'exportName') ?? 'disk',
    nbdServerArgs,
    nbdTimeoutSeconds,
    ...(layoutValue === undefined ? {} : { layout: parseLayout(layoutValue) }),
    mounts,
    stateDir: text('state-dir', 'stateDir') ?? '/run/vdisk/attach',
    ...(terminationMessagePath ? { terminationMessagePath } : {}),
  };
}
