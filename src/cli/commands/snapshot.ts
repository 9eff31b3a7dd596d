// `vdisk snapshot`: qemu-img snapshot's options (-l, -c, -a, -d, one at a time) and its "Snapshot list:"
// table (block/qapi.c dump_snapshots, nothing at all for an image without snapshots).

import { type SnapshotAction, snapshotImage } from '../../engine/commands/snapshot.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy, printHelpIfAsked } from '../common.ts';
import { COMMON_OPTIONS, CliUsageError, getopt } from '../getopt.ts';
import { imageOperand } from '../image-opts.ts';
import { snapshotRow } from './info.ts';

const HELP = `usage: vdisk snapshot [-f fmt] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename

Lists, creates, applies or deletes the internal snapshots of an image (qcow2).

  -l             list the snapshots (ID, TAG, VM SIZE, DATE, VM CLOCK, ICOUNT)
  -c snapshot    create a snapshot of the current state
  -a snapshot    revert the image to a snapshot (by ID or name)
  -d snapshot    delete a snapshot (by name)
`;

async function run(argv: string[], io: CliIo): Promise<number> {
  const parsed = getopt(argv, [
    ...COMMON_OPTIONS,
    { short: 'f', takesValue: true, key: 'format' },
    { short: 'l', takesValue: false, key: 'list' },
    { short: 'c', takesValue: true, key: 'create' },
    { short: 'a', takesValue: true, key: 'apply' },
    { short: 'd', takesValue: true, key: 'delete' },
  ]);
  if (printHelpIfAsked(parsed, io, HELP)) return 0;
  const actions: SnapshotAction[] = [];
  for (const key of ['list', 'create', 'apply', 'delete'] as const) {
    for (const value of parsed.options.get(key) ?? []) {
      actions.push(key === 'list' ? { kind: 'list' } : { kind: key, name: value });
    }
  }
  // qemu-img refuses a second action even when it repeats the first.
  if (actions.length > 1) throw new CliUsageError("Cannot mix '-l', '-a', '-c', '-d'");
  if (parsed.operands.length !== 1) throw new CliUsageError('Expecting one image file name');
  const [operand = ''] = parsed.operands;
  const { path, format } = imageOperand(parsed, operand);
  const action = actions[0];
  // Without an action qemu-img opens nothing and succeeds; so does vdisk.
  if (!action) return 0;
  const table = await snapshotImage({
    path,
    format,
    action,
    allowBackingEscape: backingPolicy.allowEscape,
  });
  if (action.kind === 'list' && table.length > 0) {
    io.stdout(`${['Snapshot list:', snapshotRow(undefined), ...table.map(snapshotRow)].join('\n')}\n`);
  }
  return 0;
}

export const snapshotCommand: CliCommand = {
  name: 'snapshot',
  synopsis: 'snapshot [-f fmt] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename',
  summary: 'List, create, apply or delete internal snapshots',
  run,
};
