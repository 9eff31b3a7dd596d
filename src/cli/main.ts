// `vdisk <command> [options]`: dispatch to the command table; map VdiskError codes to exit codes and
// print errors as qemu-img does (`vdisk: <message>`), never a stack trace for a user error.

import { isVdiskError } from '../engine/errors.ts';
import type { CliIo } from './command.ts';
import { loadAllCommands, loadCommand } from './commands/index.ts';
import { backingPolicy } from './common.ts';
import { defineCliSecrets, imageOptsPolicy } from './image-opts.ts';
import { descriptorWriter } from './stdio.ts';

/** Global flag: backing files may resolve outside their image's folder (see common.ts backingPolicy). */
const ALLOW_BACKING_ESCAPE = '--allow-backing-escape';

export async function usage(): Promise<string> {
  const lines = [
    'vdisk - virtual disk image tool (qemu-img compatible)',
    '',
    'usage: vdisk <command> [options]',
    '',
    'Commands:',
  ];
  for (const command of await loadAllCommands()) lines.push(`  ${command.synopsis}`);
  lines.push(
    '',
    'Global options:',
    `  ${ALLOW_BACKING_ESCAPE}  follow backing files outside the image's folder (refused by default)`,
    '',
    "Run 'vdisk <command> --help' for a command's options.",
  );
  return `${lines.join('\n')}\n`;
}

/** Runs one CLI invocation; returns the exit code (1 for errors, as qemu-img's error_exit). */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const allowEscape = argv.includes(ALLOW_BACKING_ESCAPE);
  backingPolicy.allowEscape = allowEscape || process.env.VDISK_ALLOW_BACKING_ESCAPE === '1';
  const [name, ...rest] = allowEscape ? argv.filter((arg) => arg !== ALLOW_BACKING_ESCAPE) : argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout(await usage());
    return name ? 0 : 1;
  }
  if (name === '--version' || name === '-V') {
    io.stdout('vdisk version 0.1.0 (qemu-img 7.2 compatible)\n');
    return 0;
  }
  const command = await loadCommand(name);
  if (!command) {
    io.stderr(`vdisk: Command not found: ${name}\n`);
    return 1;
  }
  imageOptsPolicy.enabled = rest.includes('--image-opts');
  try {
    defineCliSecrets(rest);
    return await command.run(rest, io);
  } catch (err) {
    if (isVdiskError(err) || (err instanceof Error && err.name === 'CliUsageError')) {
      io.stderr(`vdisk: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

const isMain = process.argv[1] !== undefined && /(?:vdisk(?:\.mjs)?|main\.ts)$/.test(process.argv[1]);
if (isMain) {
  const io: CliIo = {
    stdout: descriptorWriter(1, () => process.stdout),
    stderr: descriptorWriter(2, () => process.stderr),
    // A getter: creating process.stderr (a socket when it is a pipe) costs ~2 ms, which a command
    // that prints nothing to stderr, such as a convert without -p, need not pay.
    get isTty() {
      return Boolean(process.stderr.isTTY);
    },
  };
  runCli(process.argv.slice(2), io).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      io.stderr(
        `vdisk: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      process.exitCode = 1;
    },
  );
}
