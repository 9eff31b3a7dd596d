// Pieces every qemu-img-style command shares: `-o` option lists (qemu's QemuOpts syntax, `,,` for a
// literal comma), `--output=human|json`, per-command `--help` text, and opening images with the
// backing-file policy of this invocation.

import type { BlockDevice } from '../engine/block-device.ts';
import { openImage } from '../engine/open.ts';
import type { CliIo } from './command.ts';
import { CliUsageError, type ParsedArgs } from './getopt.ts';
import { imageOptsPolicy, parseImageOpts } from './image-opts.ts';

/** Parses `a=b,c=d` (repeated -o values are joined with commas first); `,,` is a literal comma. */
export function parseOptionList(values: readonly string[]): Record<string, string> {
  const result: Record<string, string> = {};
  for (const text of values) {
    const items: string[] = [];
    let current = '';
    for (let index = 0; index < text.length; index += 1) {
      const char = text[index];
      if (char === ',' && text[index + 1] === ',') {
        current += ',';
        index += 1;
      } else if (char === ',') {
        items.push(current);
        current = '';
      } else current += char;
    }
    items.push(current);
    for (const item of items) {
      if (item === '') continue;
      const equals = item.indexOf('=');
      if (equals < 0) result[item] = 'on';
      else result[item.slice(0, equals)] = item.slice(equals + 1);
    }
  }
  return result;
}

export type OutputFormat = 'human' | 'json';

/** `--output`: human (default) or json, with qemu-img's complaint otherwise. */
export function outputFormat(parsed: ParsedArgs): OutputFormat {
  const list = parsed.options.get('output');
  const value = list?.[list.length - 1] ?? 'human';
  if (value !== 'human' && value !== 'json')
    throw new CliUsageError('--output must be used with human or json as argument.');
  return value;
}

/** Prints the command's help when -h/--help was given; returns true if it did. */
export function printHelpIfAsked(parsed: ParsedArgs, io: CliIo, help: string): boolean {
  if (!parsed.options.has('help')) return false;
  io.stdout(help.endsWith('\n') ? help : `${help}\n`);
  return true;
}

/** Exactly `count` operands, or a usage error naming what is expected. */
export function requireOperands(
  parsed: ParsedArgs,
  minimum: number,
  maximum: number,
  what: string,
): string[] {
  if (parsed.operands.length < minimum) throw new CliUsageError(`Expecting ${what}`);
  if (parsed.operands.length > maximum)
    throw new CliUsageError(`Unexpected argument: ${parsed.operands[maximum]}`);
  return parsed.operands;
}

/**
 * Whether backing files may resolve outside their image's folder. Off by default, unlike qemu-img: an
 * image from elsewhere could otherwise name any file on the host as its backing file and have it read.
 * `--allow-backing-escape` (anywhere on the command line) or VDISK_ALLOW_BACKING_ESCAPE=1 turns it on;
 * runCli sets it once per invocation.
 */
export const backingPolicy = { allowEscape: false };

/**
 * Opens an image for a command, following backing files under this invocation's policy. With
 * `--image-opts` the operand is an option list (`driver=qcow2,file.filename=x,encrypt.key-secret=ID`).
 */
export function openForCli(
  path: string,
  options: { format?: string; readOnly?: boolean; noBacking?: boolean; metadataOnly?: boolean },
): Promise<BlockDevice> {
  if (imageOptsPolicy.enabled) {
    const parsed = parseImageOpts(path);
    return openImage(parsed.path, {
      ...options,
      format: parsed.format ?? options.format,
      driverOptions: parsed.driverOptions,
      allowBackingEscape: backingPolicy.allowEscape,
    });
  }
  return openImage(path, { ...options, allowBackingEscape: backingPolicy.allowEscape });
}
