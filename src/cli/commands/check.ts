// `vdisk check`: qemu-img check's options, report (qemu-img.c, dump_human_image_check and the
// ImageCheck QAPI struct for JSON) and exit codes: 0 clean, 1 check failed, 2 corruptions, 3 leaks,
// 63 when the format has no checker (qemu's exit status for ENOTSUP there).

import { checkImage } from '../../engine/commands/check.ts';
import { isVdiskError } from '../../engine/errors.ts';
import type { CheckIssue, CheckReport, RepairMode } from '../../engine/formats/driver.ts';
import { formatFixed } from '../c-format.ts';
import { imageOperand } from '../image-opts.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { outputFormat, printHelpIfAsked, requireOperands } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt, hasFlag, lastValue } from '../getopt.ts';
import { qemuJson } from '../qemu-json.ts';

const HELP = `usage: vdisk check [-f fmt] [--output=human|json] [-r leaks|all] [-U] filename

Checks the image's metadata for consistency; -r leaks repairs leaked clusters, -r all repairs
every kind of error (dangerous). Exit status: 0 clean, 2 corruptions, 3 leaks, 1 check failed,
63 the format does not support checks.
`;

/** qemu-img's exit status when the format has no check (errno 63 as qemu returns it). */
export const EXIT_CHECK_UNSUPPORTED = 63;

function nonZero(value: number | undefined): number | undefined {
  return value ? value : undefined;
}

/** The ImageCheck object: optional members present only when non-zero, as qemu sets has_*. */
export function checkJson(filename: string, format: string, report: CheckReport): Record<string, unknown> {
  return {
    filename,
    format,
    'check-errors': report.checkErrors,
    'image-end-offset': nonZero(report.imageEndOffsetBytes),
    corruptions: nonZero(report.corruptions),
    leaks: nonZero(report.leaks),
    'corruptions-fixed': nonZero(report.corruptionsFixed),
    'leaks-fixed': nonZero(report.leaksFixed),
    'total-clusters': nonZero(report.totalClusters),
    'allocated-clusters': nonZero(report.allocatedClusters),
    'fragmented-clusters': nonZero(report.fragmentedClusters),
    'compressed-clusters': nonZero(report.compressedClusters),
  };
}

/** qemu-img check's human summary. */
export function checkHuman(report: CheckReport): string {
  let out = '';
  if (!(report.corruptions || report.leaks || report.checkErrors))
    out += 'No errors were found on the image.\n';
  else {
    if (report.corruptions)
      out += `\n${report.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (report.leaks)
      out += `\n${report.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (report.checkErrors)
      out += `\n${report.checkErrors} internal errors have occurred during the check.\n`;
  }
  const total = report.totalClusters ?? 0;
  const allocated = report.allocatedClusters ?? 0;
  if (total !== 0 && allocated !== 0) {
    const percent = (value: number, of: number): string => formatFixed((value * 100) / of, 2);
    out += `${allocated}/${total} = ${percent(allocated, total)}% allocated, ${percent(report.fragmentedClusters ?? 0, allocated)}% fragmented, ${percent(report.compressedClusters ?? 0, allocated)}% compressed clusters\n`;
  }
  if (report.imageEndOffsetBytes) out += `Image end offset: ${report.imageEndOffsetBytes}\n`;
  return out;
}

/** One problem in qemu's wording: drivers give the detail, the CLI the qemu prefix for its code. */
export function issueLine(issue: CheckIssue, repair: RepairMode): string {
  const repairing = issue.fixable && (repair === 'all' || (repair === 'leaks' && issue.code === 'leak'));
  if (repairing) return `Repairing ${issue.message}`;
  if (issue.code === 'leak')
    return /^Leaked\b/.test(issue.message) ? issue.message : `Leaked ${issue.message}`;
  if (issue.code === 'corruption')
    return /^ERROR\b/.test(issue.message) ? issue.message : `ERROR ${issue.message}`;
  return issue.message;
}

/** Exit status for a finished check, as qemu-img's img_check decides it. */
export function checkExitCode(report: CheckReport): number {
  if (report.checkErrors) return 1;
  if (report.corruptions) return 2;
  if (report.leaks) return 3;
  return 0;
}

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { long: 'output', takesValue: true },
    { short: 'r', long: 'repair', takesValue: true, key: 'repair' },
    { short: 'T', takesValue: true },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const output = outputFormat(parsed);
  const [operand = ''] = requireOperands(parsed, 1, 1, 'filename');
  // Checking reads only metadata: with --image-opts the key options are not needed, only file and driver.
  // (qemu-img check --output=json names the image by the operand as given, option list and all.)
  const { path, format } = imageOperand(parsed, operand);
  const repairText = lastValue(parsed, 'repair');
  if (repairText !== undefined && repairText !== 'leaks' && repairText !== 'all')
    throw new CliUsageError(`Invalid option for -r: ${repairText}`);
  const repair: RepairMode = repairText ?? 'none';
  const quiet = hasFlag(parsed, 'quiet');
  let result: Awaited<ReturnType<typeof checkImage>>;
  try {
    result = await checkImage(path, { format, repair });
  } catch (err) {
    if (
      isVdiskError(err) &&
      err.code === 'VDISK_ENOTSUP' &&
      (err as { feature?: string }).feature === 'check'
    ) {
      io.stderr(`vdisk: ${err.message}\n`);
      return EXIT_CHECK_UNSUPPORTED;
    }
    throw err;
  }
  for (const issue of result.report.issues) io.stderr(`${issueLine(issue, repair)}\n`);
  let report = result.report;
  if (repair !== 'none' && (report.leaksFixed || report.corruptionsFixed)) {
    if (output === 'human' && !quiet) {
      io.stdout(
        `The following inconsistencies were found and repaired:\n\n    ${report.leaksFixed} leaked clusters\n    ${report.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
      );
    }
    const again = await checkImage(path, { format: result.format });
    report = { ...again.report, leaksFixed: report.leaksFixed, corruptionsFixed: report.corruptionsFixed };
  }
  if (output === 'json') io.stdout(`${qemuJson(checkJson(operand, result.format, report))}\n`);
  else if (!quiet) io.stdout(checkHuman(report));
  return checkExitCode(report);
}

export const checkCommand: CliCommand = {
  name: 'check',
  synopsis: 'check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-U] filename',
  summary: 'Check a disk image for consistency (exit 2: corruptions, 3: leaks)',
  run,
};
