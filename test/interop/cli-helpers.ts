// Shared by the cli-*.test.ts interop files: run vdisk in-process (runCli with captured output, no
// Node start-up per call) and run qemu-img beside it, both returning exit code, stdout and stderr.

import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../src/cli/main.ts';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** True when `tool` runs from PATH. */
export function hasTool(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

/** Warns once, loudly, when a tier's real tool is missing (the describe block skips). */
export function warnMissing(tool: string, file: string): void {
  if (!hasTool(tool))
    console.warn(
      `SKIPPED ${file}: '${tool}' is not installed (apt-get install qemu-utils); the interop tier needs it as the oracle`,
    );
}

/** Runs `vdisk <args>` in this process (pass absolute paths: the working folder is the test runner's). */
export async function vdisk(args: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, {
    stdout: (text) => (stdout += text),
    stderr: (text) => (stderr += text),
    isTty: false,
  });
  return { code, stdout, stderr };
}

/** Runs a tool (qemu-img, qemu-io, ...) from `cwd` and returns its status and output. */
export function tool(command: string, args: string[], cwd?: string): RunResult {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** Runs a tool and throws with its stderr when it fails. */
export function mustRun(command: string, args: string[], cwd?: string): string {
  const result = tool(command, args, cwd);
  if (result.code !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  return result.stdout;
}

/** A scratch folder under os.tmpdir() and its remover. */
export async function scratch(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `vdisk-${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
