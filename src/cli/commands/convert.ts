// `vdisk convert`: qemu-img convert's options (-f -O -o -c -p -q -n -B -F -S -m -W -l
// --target-is-zero), its -p progress line and its option errors; the copying is convert-image.ts.

import { convertImage } from '../../engine/commands/convert-image.ts';
import { convertFromStream, convertToStream } from '../../engine/commands/convert-stream.ts';
import {
  DEFAULT_MIN_SPARSE_BYTES,
  DEFAULT_PARALLEL_REQUESTS,
  MAX_PARALLEL_REQUESTS,
} from '../../engine/commands/convert.ts';
import { findDriver } from '../../engine/formats/registry.ts';
import { ByteSink, ByteSource } from '../../engine/io/byte-stream.ts';
import { parseSize } from '../../engine/size.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, parseOptionList, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';
import { parseImageOpts } from '../image-opts.ts';
import { progressPrinter } from '../progress.ts';
import { createOptionsHelp } from './create.ts';

const HELP = `usage: vdisk convert [-c] [-p] [-q] [-n] [-W] [-f fmt] [-O output_fmt] [-o options] [-t cache]
                     [-B backing_file [-F backing_fmt]] [-l snapshot] [-S sparse_size]
                     [-m num_requests] [--target-is-zero] filename [filename2 [...]] output_filename

Copies the guest contents of filename (several are concatenated) into a new image of output_fmt
(raw when absent). An output_filename of - writes a qcow2 or raw image to stdout (a pipe is fine:
the layout is computed first, then the file is written in order); a filename of - reads a qcow2 or
raw image from stdin (parts that arrive before the metadata naming them are kept in a hidden spill
file beside output_filename, removed at the end). Name a file called - as ./-.
  -c                 compress the target's clusters (qcow2)
  -p                 show progress
  -n                 the target exists: do not create it
  -B backing_file    the target gets this backing file; only the source's top layer is copied
  -S sparse_size     zero runs at least this long stay holes (default 4k; 0 writes everything)
  -m num_requests    requests in flight, 1-16 (default 8)
  -W                 let writes complete out of order
  -t cache           the target's cache mode; unsafe skips every sync (qemu-img's default); any
                     other mode (vdisk's default) ends with the target durable on disk
`;

/** qemu's cache modes (bdrv_parse_cache_mode); only `unsafe` changes what vdisk does. */
const CACHE_MODES: readonly string[] = ['none', 'writeback', 'unsafe', 'directsync', 'writethrough'];

/** qemu-img's -S validation: a multiple of 512 up to 16 MiB (MAX_BUF_SECTORS). */
export function parseSparseSize(text: string): number {
  const bytes = parseSize(text, 'S');
  if (bytes % 512 !== 0 || bytes > 16 * 1024 * 1024) {
    throw new CliUsageError(
      'Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216',
    );
  }
  return bytes;
}

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'O', takesValue: true, key: 'output-format' },
    { short: 'o', takesValue: true, key: 'options' },
    { short: 'B', takesValue: true, key: 'backing' },
    { short: 'F', takesValue: true, key: 'backing-format' },
    { short: 'l', takesValue: true, key: 'snapshot' },
    { short: 'S', takesValue: true, key: 'sparse' },
    { short: 'm', takesValue: true, key: 'requests' },
    { short: 't', takesValue: true, key: 'cache' },
    { short: 'T', takesValue: true },
    { short: 'r', takesValue: true },
    { short: 'c', takesValue: false, key: 'compress' },
    { short: 'p', takesValue: false, key: 'progress' },
    { short: 'n', takesValue: false, key: 'no-create' },
    { short: 'W', takesValue: false, key: 'out-of-order' },
    { short: 'C', takesValue: false },
    { long: 'target-is-zero', takesValue: false },
    { long: 'target-image-opts', takesValue: false },
    { long: 'salvage', takesValue: false },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const targetFormat = lastValue(parsed, 'output-format') ?? 'raw';
  const options = parseOptionList(parsed.options.get('options') ?? []);
  if (options.help !== undefined || options['?'] !== undefined) {
    io.stdout(createOptionsHelp(findDriver(targetFormat)));
    return 0;
  }
  if (parsed.operands.length < 2) throw new CliUsageError('Expecting image file name');
  // Several sources are concatenated, as qemu-img does; the last operand is the target.
  // --image-opts makes every source an option list, --target-image-opts the target (qemu-img's rules).
  const sourceOpts = hasFlag(parsed, 'image-opts')
    ? parsed.operands.slice(0, -1).map(parseImageOpts)
    : undefined;
  const targetOpts = hasFlag(parsed, 'target-image-opts')
    ? parseImageOpts(parsed.operands.at(-1) ?? '')
    : undefined;
  const sourcePaths = sourceOpts ? sourceOpts.map((opts) => opts.path) : parsed.operands.slice(0, -1);
  const targetPath = targetOpts?.path ?? parsed.operands.at(-1) ?? '';
  const [sourcePath = '', ...moreSourcePaths] = sourcePaths;
  const requestsText = lastValue(parsed, 'requests');
  const parallelRequests = requestsText === undefined ? DEFAULT_PARALLEL_REQUESTS : Number(requestsText);
  if (
    !Number.isInteger(parallelRequests) ||
    parallelRequests < 1 ||
    parallelRequests > MAX_PARALLEL_REQUESTS
  ) {
    throw new CliUsageError('Invalid number of coroutines. Allowed number of coroutines is between 1 and 16');
  }
  const sparseText = lastValue(parsed, 'sparse');
  const minSparseBytes = sparseText === undefined ? DEFAULT_MIN_SPARSE_BYTES : parseSparseSize(sparseText);
  const backingFile = lastValue(parsed, 'backing');
  const skipCreate = hasFlag(parsed, 'no-create');
  if (backingFile && skipCreate)
    throw new CliUsageError('-B makes no sense when not creating the target (-n)');
  const targetCache = lastValue(parsed, 'cache');
  if (targetCache !== undefined && !CACHE_MODES.includes(targetCache))
    throw new CliUsageError(`Invalid cache option: ${targetCache}`);
  const quiet = hasFlag(parsed, 'quiet');
  const progress = progressPrinter(io, hasFlag(parsed, 'progress') && !quiet);
  if (targetPath === '-' || sourcePaths.includes('-')) {
    const streamOnly: Array<[boolean, string]> = [
      [skipCreate, '-n'],
      [backingFile !== undefined, '-B'],
      [hasFlag(parsed, 'compress'), '-c'],
      [targetPath === '-' && sourcePaths.includes('-'), 'both input and output on a stream'],
      [sourcePaths.includes('-') && sourcePaths.length > 1, 'stdin with other sources'],
      [sourcePaths.includes('-') && lastValue(parsed, 'snapshot') !== undefined, '-l'],
    ];
    for (const [refused, what] of streamOnly)
      if (refused) throw new CliUsageError(`${what} cannot be used when converting to or from a stream (-)`);
    if (targetPath === '-') {
      if (!io.stdoutStream && process.stdout.isTTY)
        throw new CliUsageError('refusing to write an image to a terminal: redirect stdout or pipe it');
      const sink = new ByteSink(io.stdoutStream ?? process.stdout, 'stdout');
      await convertToStream({
        sourcePath,
        moreSourcePaths,
        sourceFormat: lastValue(parsed, 'format'),
        sourceSnapshot: lastValue(parsed, 'snapshot'),
        targetFormat,
        options,
        minSparseBytes,
        sink,
        onProgress: (done, total) => progress.update(done, total),
        allowBackingEscape: backingPolicy.allowEscape,
      });
      await sink.finish(io.stdoutStream !== undefined);
    } else {
      if (!io.stdinStream && process.stdin.isTTY)
        throw new CliUsageError('refusing to read an image from a terminal: pipe it into stdin');
      await convertFromStream({
        input: new ByteSource(io.stdinStream ?? process.stdin, 'stdin'),
        sourceFormat: lastValue(parsed, 'format'),
        targetPath,
        targetFormat,
        options,
        targetCache,
      });
    }
    progress.end();
    return 0;
  }
  await convertImage({
    sourcePath,
    moreSourcePaths,
    sourceFormat: sourceOpts?.[0]?.format ?? lastValue(parsed, 'format'),
    sourceDriverOptions: sourceOpts?.[0]?.driverOptions,
    targetDriverOptions: targetOpts?.driverOptions,
    sourceSnapshot: lastValue(parsed, 'snapshot'),
    targetPath,
    targetFormat: targetOpts?.format ?? targetFormat,
    options,
    backingFile,
    backingFormat: lastValue(parsed, 'backing-format'),
    skipCreate,
    targetIsZero: hasFlag(parsed, 'target-is-zero'),
    compressed: hasFlag(parsed, 'compress'),
    minSparseBytes,
    parallelRequests,
    outOfOrder: hasFlag(parsed, 'out-of-order'),
    targetCache,
    onProgress: (done, total) => progress.update(done, total),
    allowBackingEscape: backingPolicy.allowEscape,
  });
  progress.end();
  return 0;
}

export const convertCommand: CliCommand = {
  name: 'convert',
  synopsis:
    'convert [-c] [-p] [-q] [-n] [-W] [-f fmt] [-O output_fmt] [-o options] [-B backing_file [-F backing_fmt]] [-S sparse_size] [-m num] filename [filename2 [...]] output_filename',
  summary: 'Convert an image to another format (or copy it sparsely)',
  run,
};
