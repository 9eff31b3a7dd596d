// The command table, as qemu-img-cmds.hx is: `vdisk --help` and docs/cli.md are built from it.
// Each command's argv parsing, rendering and exit codes live in its own file beside this one.

import type { CliCommand } from '../command.ts';
import { partitionsCommand } from './partitions.ts';
import { serveCommand } from './serve.ts';

export const commands: readonly CliCommand[] = [
  // (commands are listed here in qemu-img's order)
  partitionsCommand,
  serveCommand,
];
