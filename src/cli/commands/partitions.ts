// `vdisk partitions [-f fmt] [--output=human|json] IMAGE`: the partition table of any image vdisk
// opens, as `fdisk -lu` and `kpartx -l` show it, with start and size in sectors AND bytes so a user
// can `mount -o loop,offset=<start bytes>,sizelimit=<size bytes>` a raw image's partition.

import { parseArgs } from 'node:util';
import { openForCli } from '../common.ts';
import {
  type PartitionEntry,
  type PartitionTable,
  readPartitionTable,
} from '../../engine/partition/index.ts';
import { formatHumanSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';

class CliUsageError extends Error {
  override readonly name = 'CliUsageError';
}

/** JSON shape of one partition (kebab-case keys, as qemu-img's JSON has them). */
export interface PartitionJson {
  number: number;
  kind: PartitionEntry['kind'];
  'start-sector': number;
  'end-sector': number;
  sectors: number;
  start: number;
  length: number;
  type: string;
  'type-name'?: string;
  bootable?: boolean;
  name?: string;
  uuid?: string;
}

function toJson(entry: PartitionEntry): PartitionJson {
  return {
    number: entry.number,
    kind: entry.kind,
    'start-sector': entry.startSector,
    'end-sector': entry.startSector + entry.sectorCount - 1,
    sectors: entry.sectorCount,
    start: entry.startBytes,
    length: entry.sizeBytes,
    type: entry.type,
    ...(entry.typeName ? { 'type-name': entry.typeName } : {}),
    ...(entry.kind === 'gpt'
      ? { name: entry.name ?? '', uuid: entry.uuid }
      : { bootable: entry.bootable ?? false }),
  };
}

function renderHuman(path: string, sizeBytes: number, table: PartitionTable | undefined): string {
  const sectors = Math.floor(sizeBytes / 512);
  const lines = [`Disk ${path}: ${formatHumanSize(sizeBytes)}, ${sizeBytes} bytes, ${sectors} sectors`];
  if (!table) return `${lines[0]}\nNo partition table.\n`;
  lines.push('Units: sectors of 1 * 512 = 512 bytes');
  lines.push(
    `Disklabel type: ${table.table === 'mbr' ? 'dos' : 'gpt'}`,
    `Disk identifier: ${table.diskId}`,
    '',
  );
  const isGpt = table.table === 'gpt';
  // GPT has no boot flag column (fdisk drops it too) but has partition names.
  const header = [
    'Device',
    ...(isGpt ? [] : ['Boot']),
    'Start',
    'End',
    'Sectors',
    'StartBytes',
    'SizeBytes',
    'Size',
    'Type',
    ...(isGpt ? ['Name'] : []),
  ];
  const rows = table.partitions.map((p) => [
    `${path}${/\d$/.test(path) ? 'p' : ''}${p.number}`,
    ...(isGpt ? [] : [p.bootable ? '*' : '']),
    String(p.startSector),
    String(p.startSector + p.sectorCount - 1),
    String(p.sectorCount),
    String(p.startBytes),
    String(p.sizeBytes),
    formatHumanSize(p.sizeBytes),
    p.typeName ?? p.type,
    ...(isGpt ? [p.name ?? ''] : []),
  ]);
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)),
  );
  const format = (row: string[]) =>
    row
      .map((cell, column) =>
        column === 0 || column >= header.indexOf('Type')
          ? cell.padEnd(widths[column] ?? 0)
          : cell.padStart(widths[column] ?? 0),
      )
      .join(' ')
      .trimEnd();
  lines.push(format(header), ...rows.map(format));
  for (const warning of table.warnings) lines.push(`Warning: ${warning}`);
  return `${lines.join('\n')}\n`;
}

async function run(argv: string[], io: CliIo): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        format: { type: 'string', short: 'f' },
        output: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  }
  try {
    parsed = parse();
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout(`usage: ${partitionsCommand.synopsis}\n${partitionsCommand.summary}\n`);
    return 0;
  }
  const output = values.output ?? 'human';
  if (output !== 'human' && output !== 'json')
    throw new CliUsageError(`--output must be human or json, not '${output}'`);
  if (positionals.length !== 1) throw new CliUsageError('Expecting one image file name');
  const path = positionals[0] ?? '';
  const device = await openForCli(path, {
    readOnly: true,
    ...(values.format ? { format: values.format } : {}),
  });
  try {
    const table = await readPartitionTable(device, path);
    if (output === 'json') {
      const json = {
        table: table ? (table.table === 'mbr' ? 'dos' : 'gpt') : null,
        ...(table ? { id: table.diskId } : {}),
        'sector-size': 512,
        'virtual-size': device.sizeBytes,
        ...(table?.firstUsableSector === undefined
          ? {}
          : { 'first-usable-sector': table.firstUsableSector, 'last-usable-sector': table.lastUsableSector }),
        partitions: table ? table.partitions.map(toJson) : [],
        ...(table && table.warnings.length > 0 ? { warnings: table.warnings } : {}),
      };
      io.stdout(`${JSON.stringify(json, null, 4)}\n`);
    } else {
      io.stdout(renderHuman(path, device.sizeBytes, table));
    }
    return 0;
  } finally {
    await device.close();
  }
}

export const partitionsCommand: CliCommand = {
  name: 'partitions',
  synopsis: 'partitions [-f fmt] [--output=ofmt] filename',
  summary:
    'List the MBR or GPT partitions of an image, with start and size in sectors and bytes (as fdisk -lu / kpartx -l)',
  run,
};
