// `vdisk commit`: qemu-img commit's options and output ("Image committed.").

import { commitImage } from '../../engine/commands/commit.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';
import { imageOperand } from '../image-opts.ts';

const HELP = `usage: vdisk commit [-f fmt] [-q] [-p] [-b base] [-d] filename

Writes the data of the image into its backing file (or, with -b, into base, deeper in the backing
chain, together with every layer in between), then empties the image so it reads through again.

  -b base   the image to commit into (must be in the backing chain; implies -d)
  -d        do not empty the image afterwards
  -p        show progress
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'b', takesValue: true, key: 'base' },
    { short: 'd', takesValue: false, key: 'drop' },
    { short: 'p', takesValue: false, key: 'progress' },
    { short: 't', takesValue: true, key: 'cache' },
    { short: 'r', takesValue: true, key: 'rateLimit' },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  if (parsed.operands.length !== 1) throw new CliUsageError('Expecting one image file name');
  const [operand = ''] = parsed.operands;
  const { path, format, driverOptions } = imageOperand(parsed, operand);
  const quiet = hasFlag(parsed, 'quiet');
  const progress = hasFlag(parsed, 'progress') && !quiet;
  let shown = -1;
  // qemu-img prints 0% before any work.
  if (progress) {
    shown = 0;
    io.stdout('    (0.00/100%)\r');
  }
  await commitImage({
    path,
    format,
    driverOptions,
    base: lastValue(parsed, 'base'),
    drop: hasFlag(parsed, 'drop'),
    allowBackingEscape: backingPolicy.allowEscape,
    ...(progress
      ? {
          onProgress: (fraction: number) => {
            const percent = Math.floor(fraction * 100);
            if (percent === shown) return;
            shown = percent;
            io.stdout(`    (${percent.toFixed(2)}/100%)\r`);
          },
        }
      : {}),
  });
  if (progress) io.stdout('\n');
  if (!quiet) io.stdout('Image committed.\n');
  return 0;
}

export const commitCommand: CliCommand = {
  name: 'commit',
  synopsis: 'commit [-f fmt] [-q] [-p] [-b base] [-d] filename',
  summary: 'Commit the changes of an image into its backing file',
  run,
};
