// `vdisk info`: qemu-img info's options, human dump (block/qapi.c, bdrv_image_info_dump) and
// --output=json (the ImageInfo QAPI struct with QDict key order), with --backing-chain.

import type { ImageInfo, SnapshotInfo } from '../../engine/block-device.ts';
import { imageInfoChain } from '../../engine/commands/info.ts';
import { formatHumanSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { openForCli, outputFormat, printHelpIfAsked, requireOperands } from '../common.ts';
import { COMMON_OPTIONS, getopt, hasFlag, lastValue } from '../getopt.ts';
import { imageOptsFilename, parseImageOpts } from '../image-opts.ts';
import { qdictKeyOrder, qemuJson } from '../qemu-json.ts';

const HELP = `usage: vdisk info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename

Shows what the image says about itself: format, virtual size, disk usage, cluster size,
backing file, snapshots and format-specific fields, as qemu-img info does.

  -f fmt            image format (probed when absent)
  --output=ofmt     'human' (default) or 'json' (qemu-img's field names and order)
  --backing-chain   also show every image of the backing chain
`;

function snapshotJson(snapshot: SnapshotInfo): Record<string, unknown> {
  return {
    id: snapshot.id,
    name: snapshot.name,
    'vm-state-size': snapshot.vmStateSizeBytes,
    'date-sec': snapshot.dateSeconds,
    'date-nsec': snapshot.dateNanoseconds,
    'vm-clock-sec': Math.floor(snapshot.vmClockNanoseconds / 1e9),
    'vm-clock-nsec': snapshot.vmClockNanoseconds % 1e9,
    icount: snapshot.icount,
  };
}

/** Formats whose qemu 7.2 driver has no bdrv_get_info: qemu-img info prints no dirty-flag for them. */
const QEMU_FORMATS_WITHOUT_GET_INFO: ReadonlySet<string> = new Set(['parallels', 'bochs', 'cloop', 'dmg']);

/** The ImageInfo QAPI object qemu-img prints (members absent when qemu leaves them out). */
export function infoJson(info: ImageInfo): Record<string, unknown> {
  return {
    filename: info.filename,
    format: info.format,
    'dirty-flag': QEMU_FORMATS_WITHOUT_GET_INFO.has(info.format) ? undefined : (info.dirty ?? false),
    'actual-size': info.actualSizeBytes,
    'virtual-size': info.virtualSizeBytes,
    'cluster-size': info.clusterSizeBytes,
    encrypted: info.encrypted ? true : undefined,
    'backing-filename': info.backingFilename,
    'full-backing-filename': info.backingFilename ? info.fullBackingFilename : undefined,
    'backing-filename-format': info.backingFormat,
    snapshots: info.snapshots && info.snapshots.length > 0 ? info.snapshots.map(snapshotJson) : undefined,
    'format-specific': info.formatSpecific,
  };
}

function pad(text: string, width: number, left: boolean): string {
  return left ? text.padEnd(width) : text.padStart(width);
}

function two(value: number): string {
  return String(value).padStart(2, '0');
}

/** One row of qemu's snapshot table (block/snapshot.c, bdrv_snapshot_dump); dates in local time. */
export function snapshotRow(snapshot: SnapshotInfo | undefined): string {
  if (!snapshot)
    return `${pad('ID', 10, true)}${pad('TAG', 17, true)}${pad('VM SIZE', 8, false)}${pad('DATE', 20, false)}${pad('VM CLOCK', 13, false)}${pad('ICOUNT', 11, false)}`;
  const date = new Date(snapshot.dateSeconds * 1000);
  const dateText = `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  const seconds = Math.floor(snapshot.vmClockNanoseconds / 1e9);
  const millis = Math.floor(snapshot.vmClockNanoseconds / 1e6) % 1000;
  const clock = `${two(Math.floor(seconds / 3600))}:${two(Math.floor(seconds / 60) % 60)}:${two(seconds % 60)}.${String(millis).padStart(3, '0')}`;
  const icount = snapshot.icount === undefined ? '' : String(snapshot.icount);
  return `${pad(snapshot.id, 9, true)} ${pad(snapshot.name, 16, true)} ${pad(formatHumanSize(snapshot.vmStateSizeBytes), 8, false)}${pad(dateText, 20, false)}${pad(clock, 13, false)}${pad(icount, 11, false)}`;
}

/** qemu's dump_qobject: dashes become spaces, nested members indented by 4 per level. */
function dumpQobject(value: unknown, indentation: number, lines: string[], prefix: string): void {
  const indent = ' '.repeat(indentation * 4);
  if (Array.isArray(value)) {
    value.forEach((item, index) => {
      const composite = typeof item === 'object' && item !== null;
      if (composite) {
        lines.push(`${prefix}${indent}[${index}]:`);
        dumpQobject(item, indentation + 1, lines, '');
      } else lines.push(`${indent}[${index}]: ${String(item)}`);
    });
    return;
  }
  const record = value as Record<string, unknown>;
  for (const key of qdictKeyOrder(Object.keys(record).filter((k) => record[k] !== undefined))) {
    const member = record[key];
    const label = `${indent}${key.replaceAll('-', ' ')}:`;
    if (typeof member === 'object' && member !== null) {
      lines.push(label);
      dumpQobject(member, indentation + 1, lines, '');
    } else lines.push(`${label} ${String(member)}`);
  }
}

/** qemu-img info's human dump of one image. */
export function infoHuman(info: ImageInfo): string {
  const lines = [`image: ${info.filename}`, `file format: ${info.format}`];
  lines.push(`virtual size: ${formatHumanSize(info.virtualSizeBytes)} (${info.virtualSizeBytes} bytes)`);
  lines.push(
    `disk size: ${info.actualSizeBytes === undefined ? 'unavailable' : formatHumanSize(info.actualSizeBytes)}`,
  );
  if (info.encrypted) lines.push('encrypted: yes');
  if (info.clusterSizeBytes !== undefined) lines.push(`cluster_size: ${info.clusterSizeBytes}`);
  if (info.dirty) lines.push('cleanly shut down: no');
  if (info.backingFilename) {
    let line = `backing file: ${info.backingFilename}`;
    if (!info.fullBackingFilename) line += ' (cannot determine actual path)';
    else if (info.fullBackingFilename !== info.backingFilename)
      line += ` (actual path: ${info.fullBackingFilename})`;
    lines.push(line);
  }
  if (info.backingFormat) lines.push(`backing file format: ${info.backingFormat}`);
  if (info.snapshots && info.snapshots.length > 0) {
    lines.push('Snapshot list:', snapshotRow(undefined));
    for (const snapshot of info.snapshots) lines.push(snapshotRow(snapshot));
  }
  if (info.formatSpecific) {
    lines.push('Format specific information:');
    dumpQobject(info.formatSpecific.data, 1, lines, '');
  }
  return `${lines.join('\n')}\n`;
}

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { long: 'output', takesValue: true },
    { long: 'backing-chain', takesValue: false },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const output = outputFormat(parsed);
  const [path = ''] = requireOperands(parsed, 1, 1, 'filename');
  const backingChain = hasFlag(parsed, 'backing-chain');
  const device = await openForCli(path, {
    format: lastValue(parsed, 'format'),
    readOnly: true,
    noBacking: !backingChain,
    metadataOnly: true,
  });
  try {
    const imageOpts = hasFlag(parsed, 'image-opts') ? parseImageOpts(path) : undefined;
    const chain = await imageInfoChain(device, imageOpts?.path ?? path, backingChain);
    const top = chain[0];
    if (imageOpts && top) top.filename = imageOptsFilename(imageOpts);
    if (output === 'json') {
      const objects = chain.map(infoJson);
      io.stdout(`${qemuJson(backingChain ? objects : objects[0])}\n`);
    } else {
      io.stdout(chain.map(infoHuman).join('\n'));
    }
  } finally {
    await device.close();
  }
  return 0;
}

export const infoCommand: CliCommand = {
  name: 'info',
  synopsis: 'info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename',
  summary: 'Show information about a disk image',
  run,
};
