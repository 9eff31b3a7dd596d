// `vdisk compare`: qemu-img compare's options, messages and exit codes (qemu-img.c, img_compare):
// 0 identical, 1 different, 2 error (open failures included).

import type { BlockDevice } from '../../engine/block-device.ts';
import { compareImages } from '../../engine/commands/compare.ts';
import { isVdiskError } from '../../engine/errors.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { openForCli, printHelpIfAsked, requireOperands } from '../common.ts';
import { COMMON_OPTIONS, getopt, hasFlag, lastValue } from '../getopt.ts';
import { progressPrinter } from '../progress.ts';

const HELP = `usage: vdisk compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2

Compares the guest contents of two images (with their backing chains). Images of different sizes
are equal when the larger one's extra part reads as zeros, unless -s (strict) is given.
Exit status: 0 identical, 1 different, 2 error.
`;

export const EXIT_COMPARE_ERROR = 2;

async function run(argv: string[], io: CliIo): Promise<number> {
  let first: BlockDevice | undefined;
  let second: BlockDevice | undefined;
  try {
    const parsed = getopt(argv, [
      ...COMMON_OPTIONS,
      { short: 'f', takesValue: true, key: 'format1' },
      { short: 'F', takesValue: true, key: 'format2' },
      { short: 'T', takesValue: true },
      { short: 'p', takesValue: false, key: 'progress' },
      { short: 's', takesValue: false, key: 'strict' },
    ]);
    if (printHelpIfAsked(parsed, io, HELP)) return 0;
    const [path1 = '', path2 = ''] = requireOperands(parsed, 2, 2, 'two image file names');
    const quiet = hasFlag(parsed, 'quiet');
    first = await openForCli(path1, { format: lastValue(parsed, 'format1'), readOnly: true });
    second = await openForCli(path2, { format: lastValue(parsed, 'format2'), readOnly: true });
    const say = (text: string): void => {
      if (!quiet) io.stdout(text);
    };
    const progress = progressPrinter(io, hasFlag(parsed, 'progress') && !quiet);
    const result = await compareImages(first, second, {
      strict: hasFlag(parsed, 'strict'),
      onProgress: (done, total) => progress.update(done, total),
    });
    if (
      result.kind !== 'size-mismatch' &&
      result.kind !== 'status-mismatch' &&
      result.sizeMismatch &&
      (result.kind === 'identical' || result.offsetBytes >= Math.min(first.sizeBytes, second.sizeBytes))
    ) {
      say('Warning: Image size mismatch!\n');
    }
    progress.end();
    switch (result.kind) {
      case 'identical':
        say('Images are identical.\n');
        return 0;
      case 'content-mismatch':
        say(`Content mismatch at offset ${result.offsetBytes}!\n`);
        return 1;
      case 'size-mismatch':
        say('Strict mode: Image size mismatch!\n');
        return 1;
      case 'status-mismatch':
        say(`Strict mode: Offset ${result.offsetBytes} block status mismatch!\n`);
        return 1;
      default:
        return EXIT_COMPARE_ERROR;
    }
  } catch (err) {
    if (isVdiskError(err) || (err instanceof Error && err.name === 'CliUsageError')) {
      io.stderr(`vdisk: ${err.message}\n`);
      return EXIT_COMPARE_ERROR;
    }
    throw err;
  } finally {
    await first?.close().catch(() => undefined);
    await second?.close().catch(() => undefined);
  }
}

export const compareCommand: CliCommand = {
  name: 'compare',
  synopsis: 'compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2',
  summary: 'Check whether two images have the same content (exit 0 same, 1 different, 2 error)',
  run,
};
