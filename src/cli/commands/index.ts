// The command table, as qemu-img-cmds.hx is: `vdisk --help` and docs/cli.md are built from it.
// Each command's argv parsing, rendering and exit codes live in its own file beside this one; a file
// is loaded only when its command runs, so `vdisk check` does not pay for the NBD server's modules.

import type { CliCommand } from '../command.ts';

/** Command name -> its module's CliCommand, in qemu-img's (alphabetical) order. */
const loaders: Readonly<Record<string, () => Promise<CliCommand>>> = {
  amend: async () => (await import('./amend.ts')).amendCommand,
  check: async () => (await import('./check.ts')).checkCommand,
  commit: async () => (await import('./commit.ts')).commitCommand,
  compare: async () => (await import('./compare.ts')).compareCommand,
  convert: async () => (await import('./convert.ts')).convertCommand,
  create: async () => (await import('./create.ts')).createCommand,
  info: async () => (await import('./info.ts')).infoCommand,
  map: async () => (await import('./map.ts')).mapCommand,
  measure: async () => (await import('./measure.ts')).measureCommand,
  partitions: async () => (await import('./partitions.ts')).partitionsCommand,
  rebase: async () => (await import('./rebase.ts')).rebaseCommand,
  resize: async () => (await import('./resize.ts')).resizeCommand,
  serve: async () => (await import('./serve.ts')).serveCommand,
  snapshot: async () => (await import('./snapshot.ts')).snapshotCommand,
};

/** Every command name, in table order. */
export const commandNames: readonly string[] = Object.keys(loaders);

/** The named command, or undefined when there is none. */
export function loadCommand(name: string): Promise<CliCommand> | undefined {
  return Object.hasOwn(loaders, name) ? loaders[name]?.() : undefined;
}

/** Every command (for --help and docs/cli.md). */
export function loadAllCommands(): Promise<CliCommand[]> {
  return Promise.all(commandNames.map((name) => loaders[name]?.() as Promise<CliCommand>));
}
