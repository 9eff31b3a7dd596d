// `vdisk map`: qemu-img map's options and both outputs (qemu-img.c, dump_map_entry): JSON lines in
// qemu's fixed member order, or the human table of data extents with their host offsets.

import type { BlockDevice } from '../../engine/block-device.ts';
import { combineBackingPath } from '../../engine/commands/info.ts';
import { type MapEntry, mapImage } from '../../engine/commands/map.ts';
import { UnsupportedError } from '../../engine/errors.ts';
import { parseSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { openForCli, outputFormat, printHelpIfAsked, requireOperands } from '../common.ts';
import { COMMON_OPTIONS, getopt, lastValue } from '../getopt.ts';

const HELP = `usage: vdisk map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=human|json] [-U] filename

Shows which guest ranges are allocated, zero or data, in which layer of the backing chain (depth)
and at which host offset, as qemu-img map does.
`;

/** One JSON line as qemu-img prints it (no trailing comma or newline). */
export function mapEntryJson(entry: MapEntry): string {
  const offset = entry.offsetBytes === undefined ? '' : `, "offset": ${entry.offsetBytes}`;
  return `{ "start": ${entry.startBytes}, "length": ${entry.lengthBytes}, "depth": ${entry.depth}, "present": ${entry.present}, "zero": ${entry.zero}, "data": ${entry.data}${offset}}`;
}

/**
 * Names qemu prints in the human table's File column: backing layers as path_combine builds them
 * from the top image's name (open.ts resolves them to absolute paths to open them).
 */
async function layerNames(device: BlockDevice, path: string): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let layer: BlockDevice | undefined = device;
  let name = path;
  for (let depth = 0; layer && depth < 256; depth += 1) {
    const info = await layer.info();
    names.set(info.filename, name);
    if (!info.backingFilename) break;
    name = combineBackingPath(name, info.backingFilename);
    layer = layer.backing;
  }
  return names;
}

function hex(value: number): string {
  return value === 0 ? '0' : `0x${value.toString(16)}`;
}

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { long: 'output', takesValue: true },
    { long: 'start-offset', takesValue: true },
    { long: 'max-length', takesValue: true },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const output = outputFormat(parsed);
  const [path = ''] = requireOperands(parsed, 1, 1, 'filename');
  const startText = lastValue(parsed, 'start-offset');
  const lengthText = lastValue(parsed, 'max-length');
  const device = await openForCli(path, { format: lastValue(parsed, 'format'), readOnly: true });
  try {
    const requestedStartBytes = startText === undefined ? 0 : parseSize(startText, 'start-offset');
    const startBytes = Math.min(requestedStartBytes, device.sizeBytes);
    const maxBytes = lengthText === undefined ? device.sizeBytes : parseSize(lengthText, 'max-length');
    const lengthBytes = Math.min(maxBytes, device.sizeBytes - startBytes);
    if (output === 'json') {
      io.stdout('[');
      let first = true;
      for await (const entry of mapImage(device, startBytes, lengthBytes)) {
        io.stdout(`${first ? '' : ',\n'}${mapEntryJson(entry)}`);
        first = false;
      }
      // qemu-img prints its empty starting entry when the window holds nothing.
      if (first) {
        io.stdout(
          mapEntryJson({
            startBytes: requestedStartBytes,
            lengthBytes: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
          }),
        );
      }
      io.stdout(']\n');
    } else {
      const names = await layerNames(device, path);
      io.stdout(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for await (const entry of mapImage(device, startBytes, lengthBytes)) {
        if (entry.data && entry.offsetBytes === undefined) {
          throw new UnsupportedError({
            format: device.formatName,
            feature: 'map',
            message: 'File contains external, encrypted or compressed clusters.',
          });
        }
        if (entry.data && !entry.zero) {
          io.stdout(
            `${hex(entry.startBytes).padEnd(16)}${hex(entry.lengthBytes).padEnd(16)}${hex(entry.offsetBytes ?? 0).padEnd(16)}${names.get(entry.hostFile ?? '') ?? entry.hostFile ?? ''}\n`,
          );
        }
      }
    }
  } finally {
    await device.close();
  }
  return 0;
}

export const mapCommand: CliCommand = {
  name: 'map',
  synopsis: 'map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename',
  summary: 'Dump the allocation map of a disk image',
  run,
};
