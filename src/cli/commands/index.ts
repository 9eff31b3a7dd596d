// The command table, as qemu-img-cmds.hx is: `vdisk --help` and docs/cli.md are built from it.
// Each command's argv parsing, rendering and exit codes live in its own file beside this one.

import type { CliCommand } from '../command.ts';
import { amendCommand } from './amend.ts';
import { checkCommand } from './check.ts';
import { commitCommand } from './commit.ts';
import { compareCommand } from './compare.ts';
import { convertCommand } from './convert.ts';
import { createCommand } from './create.ts';
import { infoCommand } from './info.ts';
import { mapCommand } from './map.ts';
import { measureCommand } from './measure.ts';
import { partitionsCommand } from './partitions.ts';
import { rebaseCommand } from './rebase.ts';
import { resizeCommand } from './resize.ts';
import { serveCommand } from './serve.ts';
import { snapshotCommand } from './snapshot.ts';

export const commands: readonly CliCommand[] = [
  // (commands are listed here in qemu-img's order)
  amendCommand,
  checkCommand,
  commitCommand,
  compareCommand,
  convertCommand,
  createCommand,
  infoCommand,
  mapCommand,
  measureCommand,
  partitionsCommand,
  rebaseCommand,
  resizeCommand,
  serveCommand,
  snapshotCommand,
];
