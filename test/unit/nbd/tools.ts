// Finding and running the real NBD clients the tests drive (libnbd's nbdinfo/nbdcopy and its Python
// binding, which nbdsh is), with loud skips when one is missing.

import { execFile, spawnSync } from 'node:child_process';
import { has as hasTool } from '../../helpers/format-harness.ts';

/** True when a tool is on PATH (format-harness's `has`). */
export { hasTool };

/** A python3 that can `import nbd` (python3-libnbd, the module nbdsh runs), or undefined. */
export const libnbdPython: string | undefined = ['/usr/bin/python3', 'python3'].find(
  (candidate) => spawnSync(candidate, ['-c', 'import nbd'], { stdio: 'ignore' }).status === 0,
);

/** Prints why a suite is skipped, so a missing tool is never silent. */
export function warnMissing(what: string, tools: string[]): void {
  const missing = tools.filter((tool) => (tool === 'nbdsh' ? !libnbdPython : !hasTool(tool)));
  if (missing.length > 0)
    console.warn(
      `SKIPPED ${what}: missing ${missing.join(', ')} (apt-get install libnbd-bin python3-libnbd qemu-utils nbdkit)`,
    );
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (never throws on a non-zero exit). */
export function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; input?: string } = {},
): Promise<ToolResult> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : 1
          : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/**
 * Runs a Python script with libnbd's binding (what nbdsh is): `uri` is sys.argv[1]. The script's
 * asserts are the test; a failure shows its traceback.
 */
export async function runNbdPython(script: string, uri: string): Promise<ToolResult> {
  if (!libnbdPython) throw new Error('python3-libnbd is not installed');
  return run(libnbdPython, ['-c', script, uri]);
}
