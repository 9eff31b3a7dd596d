// Shared by the cli-*.test.ts interop files: run vdisk in-process (runCli with captured output, no
// Node start-up per call) and run qemu-img beside it, both returning exit code, stdout and stderr.

import { expect } from 'vitest';
import { has, runStatus } from '../helpers/format-harness.ts';
import { type RunResult, runVdisk } from '../helpers/run-vdisk.ts';

/** Tool detection and scratch folders are format-harness's: `hasTool(tool)`, `scratch(prefix)`. */
export { has as hasTool, scratchDir as scratch } from '../helpers/format-harness.ts';
/** The in-process CLI runner is run-vdisk's: `vdisk(args)`. */
export { type RunResult, runVdisk as vdisk } from '../helpers/run-vdisk.ts';

/** Warns once, loudly, when a tier's real tool is missing (the describe block skips). */
export function warnMissing(tool: string, file: string): void {
  if (!has(tool))
    console.warn(
      `SKIPPED ${file}: '${tool}' is not installed (apt-get install qemu-utils); the interop tier needs it as the oracle`,
    );
}

/** Runs a tool (qemu-img, qemu-io, ...) from `cwd` and returns its status and output. */
export function tool(command: string, args: string[], cwd?: string): RunResult {
  const { status, stdout, stderr } = runStatus(command, args, cwd);
  return { code: status, stdout, stderr };
}

/** Runs `qemu-img <args>` and `vdisk <args>` and expects the same exit code and stdout (args shown on failure). */
export async function expectSameAsQemuImg(args: string[]): Promise<void> {
  const qemu = tool('qemu-img', args);
  const ours = await runVdisk(args);
  expect({ args, code: ours.code, stdout: ours.stdout }).toEqual({
    args,
    code: qemu.code,
    stdout: qemu.stdout,
  });
}

/** Runs a tool and throws with its stderr when it fails. */
export function mustRun(command: string, args: string[], cwd?: string): string {
  const result = tool(command, args, cwd);
  if (result.code !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  return result.stdout;
}
