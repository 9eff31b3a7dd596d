// `vdisk-agent imager <operation> --image=... [...]`: one image operation on the PVC mounted at /data,
// run by an imager Job. Prints progress lines while it works (see progress.ts), then a JSON result on
// stdout, also written to the termination message, which the controller reads into status.image. Exit 0 ok, 2 permanent failure, 1 transient (one retry).

import { basename } from 'node:path';
import { type ImagerResult, parseImagerArgs } from '../../api/imager.ts';
import { isVdiskError } from '../../engine/errors.ts';
import { hostPath } from '../runtime/paths.ts';
import { runOperation } from './operations.ts';
import { progressPrinter } from './progress.ts';
import {
  DEFAULT_TERMINATION_PATH,
  describeImage,
  encodeResult,
  exitCodeFor,
  writeTerminationMessage,
} from './report.ts';

function failure(operation: string, err: unknown): ImagerResult {
  const error = err as { code?: unknown; option?: unknown; value?: unknown; message?: unknown };
  if (isVdiskError(err) && error.code === 'VDISK_EINVAL' && error.option === 'sha256') {
    const match = /expected sha256 ([a-f0-9]{64}), got ([a-f0-9]{64})/.exec(String(error.message));
    return {
      ok: false,
      operation,
      code: 'VDISK_ECHECKSUM',
      message: String(error.message),
      ...(match ? { expectedSha256: match[1], actualSha256: match[2] } : {}),
    };
  }
  if (isVdiskError(err))
    return { ok: false, operation, code: String(error.code), message: String(error.message) };
  if (err instanceof TypeError && /^imager:/.test(err.message))
    return { ok: false, operation, code: 'VDISK_EINVAL', message: err.message };
  return {
    ok: false,
    operation,
    code: 'VDISK_EINTERNAL',
    message: err instanceof Error ? err.message : String(err),
  };
}

/** Runs the imager; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const startedMs = Date.now();
  const terminationPath = hostPath(process.env.VDISK_TERMINATION_MESSAGE_PATH ?? DEFAULT_TERMINATION_PATH);
  let result: ImagerResult;
  let operation = argv[0] ?? '';
  try {
    const request = parseImagerArgs(argv);
    operation = request.operation;
    const outcome = await runOperation(
      request,
      hostPath,
      progressPrinter((line) => process.stdout.write(line)),
    );
    const image = await describeImage(outcome.imagePath, request.format, basename(request.image));
    result = {
      ok: true,
      operation: request.operation,
      image: { ...image, ...(outcome.sha256 ? { sha256: outcome.sha256 } : {}) },
      ...(outcome.snapshot ? { snapshot: outcome.snapshot } : {}),
      durationMs: Date.now() - startedMs,
    };
  } catch (err) {
    result = failure(operation, err);
  }
  const text = encodeResult(result);
  process.stdout.write(`${text}\n`);
  await writeTerminationMessage(terminationPath, text);
  return exitCodeFor(result);
}
