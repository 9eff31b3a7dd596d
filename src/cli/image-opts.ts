// qemu-img's ways of naming keys and image options on the command line: `--object secret,id=ID,
// data=TEXT|file=PATH[,format=raw|base64]` defines a secret for this invocation, and `--image-opts`
// turns a filename operand into `driver=FMT,file.filename=PATH,encrypt.key-secret=ID,...`.

import { readFileSync } from 'node:fs';
import { defineSecret } from '../engine/crypto/secrets.ts';
import { InvalidOptionError } from '../engine/errors.ts';
import { parseOptionList } from './common.ts';
import { hasFlag, lastValue, type ParsedArgs } from './getopt.ts';
import { qdictKeyOrder } from './qemu-json.ts';

/** Set by runCli when argv has `--image-opts`: openForCli then reads operands as option lists. */
export const imageOptsPolicy = { enabled: false };

export interface ImageOpts {
  path: string;
  format: string | undefined;
  /** Everything but driver and file.*: handed to the format driver (encrypt.key-secret, key-secret, ...). */
  driverOptions: Record<string, string>;
}

/** Parses an `--image-opts` operand; throws InvalidOptionError when it names no file. */
export function parseImageOpts(text: string): ImageOpts {
  const options = parseOptionList([text]);
  const path = options['file.filename'] ?? options.file;
  if (!path)
    throw new InvalidOptionError({
      option: 'image-opts',
      value: text,
      message: `Could not open '${text}': A block device must be specified for "file"`,
    });
  const driverOptions: Record<string, string> = {};
  for (const [key, value] of Object.entries(options))
    if (key !== 'driver' && key !== 'file' && !key.startsWith('file.')) driverOptions[key] = value;
  return { path, format: options.driver, driverOptions };
}

/** The image one operand names: its path, its format (or undefined: probe) and driver options. */
export interface ImageOperand {
  path: string;
  format: string | undefined;
  /** From --image-opts only (encrypt.key-secret, ...); undefined without it. */
  driverOptions: Record<string, string> | undefined;
}

/**
 * Reads an image operand as every qemu-img command does: with `--image-opts` an option list giving the
 * file, the driver and its options; otherwise a file name, with `-f` (key `format`) as the format.
 */
export function imageOperand(parsed: ParsedArgs, operand: string): ImageOperand {
  if (!hasFlag(parsed, 'image-opts'))
    return { path: operand, format: lastValue(parsed, 'format'), driverOptions: undefined };
  const { path, format, driverOptions } = parseImageOpts(operand);
  return { path, format, driverOptions };
}

/**
 * The name qemu-img prints for an image opened with `--image-opts`: `json:` and the options as a QDict,
 * `file` nested as {driver: file, filename}, keys in qemu's QDict order, values as strings.
 */
export function imageOptsFilename(opts: ImageOpts): string {
  const dict = (entries: Record<string, unknown>): string =>
    `{${qdictKeyOrder(Object.keys(entries))
      .map((key) => {
        const value = entries[key];
        return `${JSON.stringify(key)}: ${typeof value === 'string' ? JSON.stringify(value) : dict(value as Record<string, unknown>)}`;
      })
      .join(', ')}}`;
  const entries: Record<string, unknown> = {
    ...opts.driverOptions,
    file: { driver: 'file', filename: opts.path },
  };
  if (opts.format !== undefined) entries.driver = opts.format;
  return `json:${dict(entries)}`;
}

/** The values of every `--object` in argv (both `--object X` and `--object=X`), in order. */
function objectValues(argv: readonly string[]): string[] {
  const values: string[] = [];
  for (let index = 0; index < argv.length; index++) {
    const arg = argv[index] ?? '';
    if (arg === '--') break;
    if (arg === '--object' && index + 1 < argv.length) values.push(argv[++index] ?? '');
    else if (arg.startsWith('--object=')) values.push(arg.slice('--object='.length));
  }
  return values;
}

/**
 * Defines every `--object secret,...` of argv in the engine's secret store (other object types, such as
 * serve's tls-creds, are left to their command). Throws InvalidOptionError for a malformed secret.
 */
export function defineCliSecrets(argv: readonly string[]): void {
  for (const text of objectValues(argv)) {
    const [type] = text.split(',', 1);
    if (type !== 'secret') continue;
    const props = parseOptionList([text.slice(type.length + 1)]);
    const id = props.id;
    if (!id) throw new InvalidOptionError({ option: 'object', message: "Parameter 'id' is missing" });
    if ((props.data === undefined) === (props.file === undefined))
      throw new InvalidOptionError({
        option: 'object',
        value: id,
        message: `secret '${id}': exactly one of 'data' and 'file' must be given`,
      });
    const format = props.format ?? 'raw';
    if (format !== 'raw' && format !== 'base64')
      throw new InvalidOptionError({
        option: 'object',
        value: id,
        message: `secret '${id}': format must be 'raw' or 'base64'`,
      });
    if (props.keyid !== undefined)
      throw new InvalidOptionError({
        option: 'object',
        value: id,
        message: `secret '${id}': encrypted secrets (keyid=) are not supported`,
      });
    let raw: Buffer;
    if (props.data !== undefined) raw = Buffer.from(props.data, 'utf8');
    else {
      try {
        raw = readFileSync(props.file ?? '');
      } catch (err) {
        throw new InvalidOptionError({
          option: 'object',
          value: id,
          message: `secret '${id}': Unable to read ${props.file}`,
          cause: err,
        });
      }
    }
    const value = format === 'base64' ? Buffer.from(raw.toString('latin1').trim(), 'base64') : raw;
    defineSecret(id, value);
  }
}
