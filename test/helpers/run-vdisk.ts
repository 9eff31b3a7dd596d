// Running the vdisk CLI in this process (runCli with captured output, no Node start-up per call), for
// the unit and interop tests that drive commands.

import { runCli } from '../../src/cli/main.ts';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `vdisk <args>` in this process (pass absolute paths: the working folder is the test runner's). */
export async function runVdisk(args: string[], isTty = false): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, {
    stdout: (text) => (stdout += text),
    stderr: (text) => (stderr += text),
    isTty,
  });
  return { code, stdout, stderr };
}
