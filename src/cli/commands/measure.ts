// `vdisk measure`: qemu-img measure's options and output (human lines, or the BlockMeasureInfo
// object in QDict key order): host bytes a new image of -O format needs.

import type { BlockDevice } from '../../engine/block-device.ts';
import { measureImage } from '../../engine/commands/measure.ts';
import { parseSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { openForCli, outputFormat, parseOptionList, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, lastValue } from '../getopt.ts';
import { qemuJson } from '../qemu-json.ts';

const HELP = `usage: vdisk measure [--output=human|json] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]

Calculates the host file size an image of output_fmt needs: for a new image of size N, or to
convert the given image.
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'O', takesValue: true, key: 'output-format' },
    { short: 'o', takesValue: true, key: 'options' },
    { short: 'l', takesValue: true, key: 'snapshot' },
    { long: 'output', takesValue: true },
    { long: 'size', takesValue: true },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const output = outputFormat(parsed);
  const sizeText = lastValue(parsed, 'size');
  if (parsed.operands.length > 1) throw new CliUsageError('At most one filename argument is allowed.');
  if ((sizeText === undefined) === (parsed.operands.length === 0))
    throw new CliUsageError('Either --size N or one filename must be specified.');
  const options = parseOptionList(parsed.options.get('options') ?? []);
  const outputFmt = lastValue(parsed, 'output-format') ?? 'raw';
  let source: BlockDevice | undefined;
  const path = parsed.operands[0];
  if (path !== undefined)
    source = await openForCli(path, { format: lastValue(parsed, 'format'), readOnly: true });
  try {
    const sizeBytes = sizeText === undefined ? undefined : parseSize(sizeText, 'size');
    const result = await measureImage({ outputFormat: outputFmt, options, sizeBytes, source });
    if (output === 'json') {
      io.stdout(
        `${qemuJson({ required: result.requiredBytes, 'fully-allocated': result.fullyAllocatedBytes, bitmaps: result.bitmapsBytes })}\n`,
      );
    } else {
      io.stdout(
        `required size: ${result.requiredBytes}\nfully allocated size: ${result.fullyAllocatedBytes}\n`,
      );
      if (result.bitmapsBytes !== undefined) io.stdout(`bitmaps size: ${result.bitmapsBytes}\n`);
    }
  } finally {
    await source?.close();
  }
  return 0;
}

export const measureCommand: CliCommand = {
  name: 'measure',
  synopsis: 'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]',
  summary: 'Calculate the file size required for a new image',
  run,
};
