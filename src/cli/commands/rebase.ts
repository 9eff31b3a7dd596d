// `vdisk rebase`: qemu-img rebase's options. Safe mode (default) keeps the guest-visible content by
// copying what differs between the old and new backing; -u only rewrites the reference; -b "" flattens.

import { rebaseImage } from '../../engine/commands/rebase.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';
import { imageOperand } from '../image-opts.ts';

const HELP = `usage: vdisk rebase [-f fmt] [-p] [-q] [-u] -b backing_file [-F backing_fmt] filename

Changes the backing file of an image. In safe mode (the default) every range where the old and the
new backing file differ, and the image has no data of its own, is copied into the image first, so the
guest sees the same content. -u (unsafe) only changes the name. -b "" removes the backing file
(in safe mode its data is copied into the image first).

  -b backing_file   the new backing file, recorded as given (relative names: to the image's folder)
  -F backing_fmt    its format (required with a non-empty -b)
  -u                unsafe mode: rewrite the name and format only
  -p                show progress
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'F', takesValue: true, key: 'backingFormat' },
    { short: 'b', takesValue: true, key: 'backing' },
    { short: 'u', takesValue: false, key: 'unsafe' },
    { short: 'p', takesValue: false, key: 'progress' },
    { short: 't', takesValue: true, key: 'cache' },
    { short: 'T', takesValue: true, key: 'sourceCache' },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const unsafe = hasFlag(parsed, 'unsafe');
  const backing = lastValue(parsed, 'backing');
  if (parsed.operands.length !== 1) throw new CliUsageError('Expecting one image file name');
  if (!unsafe && backing === undefined)
    throw new CliUsageError('Must specify backing file (-b) or use unsafe mode (-u)');
  const [operand = ''] = parsed.operands;
  const { path, format, driverOptions } = imageOperand(parsed, operand);
  const progress = hasFlag(parsed, 'progress') && !hasFlag(parsed, 'quiet');
  let shown = -1;
  // qemu-img prints 0% before any work.
  if (progress) {
    shown = 0;
    io.stdout('    (0.00/100%)\r');
  }
  await rebaseImage({
    path,
    format,
    driverOptions,
    backing: backing ?? '',
    backingFormat: lastValue(parsed, 'backingFormat'),
    unsafe,
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
  return 0;
}

export const rebaseCommand: CliCommand = {
  name: 'rebase',
  synopsis: 'rebase [-f fmt] [-p] [-q] [-u] -b backing_file [-F backing_fmt] filename',
  summary: "Change an image's backing file",
  run,
};
