// `vdisk resize`: qemu-img resize's options and output ("Image resized."). The size is taken off the
// end of argv before option parsing, as qemu-img does, so `-1G` is a size and not an option.

import { resizeImage } from '../../engine/commands/resize.ts';
import { parseSizeChange } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, printHelpIfAsked, requireOperands } from '../common.ts';
import { imageOperand } from '../image-opts.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';

const HELP = `usage: vdisk resize [-f fmt] [--preallocation=off|metadata|falloc|full] [-q] [--shrink] filename [+ | -]size

Changes the guest size of the image: an absolute size, or +size / -size relative to the current one.
Shrinking needs --shrink, because it deletes all data beyond the new end of the image.
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const sizeText =
    argv.length > 0 && !argv.includes('-h') && !argv.includes('--help') ? argv[argv.length - 1] : undefined;
  const parsed = getopt(sizeText === undefined ? argv : argv.slice(0, -1), [
    ...COMMON_OPTIONS,
    { short: 'f', long: 'format', takesValue: true, key: 'format' },
    { long: 'preallocation', takesValue: true },
    { long: 'shrink', takesValue: false },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const [operand = ''] = requireOperands(parsed, 1, 1, 'image file name and size');
  const image = imageOperand(parsed, operand);
  if (sizeText === undefined) throw new CliUsageError('Expecting image file name and size');
  const preallocation = lastValue(parsed, 'preallocation');
  if (preallocation !== undefined && !['off', 'metadata', 'falloc', 'full'].includes(preallocation)) {
    throw new CliUsageError(`Invalid preallocation mode '${preallocation}'`);
  }
  await resizeImage({
    ...image,
    change: parseSizeChange(sizeText, 'size'),
    shrink: hasFlag(parsed, 'shrink'),
    ...(preallocation === undefined ? {} : { preallocation }),
    allowBackingEscape: backingPolicy.allowEscape,
  });
  if (!hasFlag(parsed, 'quiet')) io.stdout('Image resized.\n');
  return 0;
}

export const resizeCommand: CliCommand = {
  name: 'resize',
  synopsis: 'resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size',
  summary: 'Change the guest size of a disk image',
  run,
};
