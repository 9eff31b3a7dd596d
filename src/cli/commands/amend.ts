// `vdisk amend`: qemu-img amend's options; silent on success, exit 1 with qemu-img's message otherwise.

import { amendImage } from '../../engine/commands/amend.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, parseOptionList, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, lastValue } from '../getopt.ts';

const HELP = `usage: vdisk amend [-f fmt] [-p] [-q] -o options filename

Changes format options of an existing image in place (qcow2):

  -o compat=0.10|1.1        qcow2 version (0.10 refuses images using what version 2 cannot express)
  -o lazy_refcounts=on|off  lazy refcounts (version 1.1 only)
  -o refcount_bits=N        refcount width, a power of two up to 64 (other than 16: version 1.1 only)
  -o size=N                 guest size (a smaller size drops the data past it, as qemu-img amend does)
  backing_file / backing_fmt may only repeat the current values: use 'vdisk rebase' to change them.
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'o', takesValue: true, key: 'options' },
    { short: 'p', takesValue: false, key: 'progress' },
    { short: 't', takesValue: true, key: 'cache' },
    { long: 'force', takesValue: false },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const optionTexts = parsed.options.get('options') ?? [];
  if (optionTexts.length === 0) throw new CliUsageError('Must specify options (-o)');
  if (parsed.operands.length !== 1) throw new CliUsageError('Expecting one image file name');
  const [path = ''] = parsed.operands;
  await amendImage({
    path,
    format: lastValue(parsed, 'format'),
    options: parseOptionList(optionTexts),
    allowBackingEscape: backingPolicy.allowEscape,
  });
  return 0;
}

export const amendCommand: CliCommand = {
  name: 'amend',
  synopsis: 'amend [-f fmt] [-p] [-q] -o options filename',
  summary: 'Change format options of an existing image',
  run,
};
