// `vdisk create`: qemu-img create's options and "Formatting ..." line; `-o help` lists the format's
// options from its driver record. Size suffixes as qemu's (binary k, M, G, T, P, E).

import { createImage } from '../../engine/commands/create.ts';
import { InvalidOptionError } from '../../engine/errors.ts';
import type { FormatDriver } from '../../engine/formats/driver.ts';
import { findDriver } from '../../engine/formats/registry.ts';
import { parseSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, parseOptionList, printHelpIfAsked, requireOperands } from '../common.ts';
import { formattingLine } from '../formatting-line.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';

const HELP = `usage: vdisk create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]

Creates a new image of format fmt (raw when absent). size takes k, M, G, T, P or E suffixes
(binary units); without it the backing file's size is used. '-o help' lists the format's options.
`;

/** `-o help` text for a driver, in qemu's layout. */
export function createOptionsHelp(driver: FormatDriver): string {
  const lines = [`Supported ${driver.name} options:`];
  for (const option of driver.createOptions) {
    const kind =
      option.type === 'bool'
        ? 'bool (on/off)'
        : option.type === 'number'
          ? 'num'
          : option.type === 'size'
            ? 'size'
            : 'str';
    lines.push(`  ${`${option.name}=<${kind}>`.padEnd(22)} - ${option.help}`);
  }
  return `${lines.join('\n')}\n`;
}

/** qemu-img's size for create: a size string, failing with its message. */
export function parseImageSize(text: string): number {
  try {
    if (text.trim().startsWith('-')) throw new Error('negative');
    return parseSize(text, 'size');
  } catch (err) {
    throw new InvalidOptionError({
      option: 'size',
      value: text,
      message:
        'Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
      cause: err,
    });
  }
}

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'b', takesValue: true, key: 'backing' },
    { short: 'F', takesValue: true, key: 'backing-format' },
    { short: 'o', takesValue: true, key: 'options' },
    { short: 'u', takesValue: false, key: 'unsafe' },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const format = lastValue(parsed, 'format') ?? 'raw';
  const options = parseOptionList(parsed.options.get('options') ?? []);
  if (options.help !== undefined || options['?'] !== undefined) {
    io.stdout(createOptionsHelp(findDriver(format)));
    return 0;
  }
  const [path = '', sizeText] = requireOperands(parsed, 1, 2, 'filename');
  const backingFile = lastValue(parsed, 'backing') ?? options.backing_file;
  const backingFormat = lastValue(parsed, 'backing-format') ?? options.backing_fmt;
  if (backingFile && !backingFormat)
    throw new CliUsageError(`${path}: Backing file specified without backing format`);
  const sizeBytes = sizeText === undefined ? undefined : parseImageSize(sizeText);
  findDriver(format);
  const { sizeBytes: createdBytes } = await createImage({
    path,
    format,
    sizeBytes,
    options,
    backingFile,
    backingFormat,
    unsafe: hasFlag(parsed, 'unsafe'),
    allowBackingEscape: backingPolicy.allowEscape,
  });
  if (!hasFlag(parsed, 'quiet')) {
    const printed: Record<string, string> = { ...options, size: String(createdBytes) };
    if (backingFile) printed.backing_file = backingFile;
    if (backingFormat) printed.backing_fmt = backingFormat;
    io.stdout(`${formattingLine(path, format, printed)}\n`);
  }
  return 0;
}

export const createCommand: CliCommand = {
  name: 'create',
  synopsis: 'create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]',
  summary: 'Create a new disk image',
  run,
};
