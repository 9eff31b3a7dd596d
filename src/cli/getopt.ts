// argv parsing as qemu-img's getopt_long does it: combined short flags (`-cp`), attached or separate
// short arguments (`-Oqcow2`, `-O qcow2`), `--long=value` and `--long value`, options after operands
// (GNU permutation) and `--` ending options. Errors are CliUsageError (exit 1, `vdisk: <message>`).

/** A user error in argv: main.ts prints `vdisk: <message>` and exits 1, with no stack trace. */
export class CliUsageError extends Error {
  override readonly name = 'CliUsageError';
}

export interface OptionSpec {
  /** Single-letter spelling (`f` for `-f`), if any. */
  short?: string;
  /** Long spelling without dashes (`output` for `--output`), if any. */
  long?: string;
  takesValue: boolean;
  /** Key under which parsed values are stored (defaults to the long, then the short name). */
  key?: string;
}

export interface ParsedArgs {
  /** Every occurrence in order: later ones win for scalar options, `-o` values are joined by callers. */
  options: Map<string, string[]>;
  operands: string[];
}

function keyOf(spec: OptionSpec): string {
  return spec.key ?? spec.long ?? spec.short ?? '?';
}

/** Parses `argv` against `specs`; throws CliUsageError for unknown options or missing values. */
export function getopt(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const options = new Map<string, string[]>();
  const operands: string[] = [];
  const add = (spec: OptionSpec, value: string): void => {
    const key = keyOf(spec);
    const list = options.get(key) ?? [];
    list.push(value);
    options.set(key, list);
  };
  let index = 0;
  while (index < argv.length) {
    const arg = argv[index] ?? '';
    index += 1;
    if (arg === '--') {
      operands.push(...argv.slice(index));
      break;
    }
    if (arg.startsWith('--')) {
      const equals = arg.indexOf('=');
      const name = arg.slice(2, equals < 0 ? undefined : equals);
      const spec = specs.find((candidate) => candidate.long === name);
      if (!spec) throw new CliUsageError(`unrecognized option '${arg}'`);
      if (!spec.takesValue) {
        if (equals >= 0) throw new CliUsageError(`option '--${name}' doesn't allow an argument`);
        add(spec, '');
      } else if (equals >= 0) {
        add(spec, arg.slice(equals + 1));
      } else {
        const value = argv[index];
        if (value === undefined) throw new CliUsageError(`option '--${name}' requires an argument`);
        index += 1;
        add(spec, value);
      }
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      for (let position = 1; position < arg.length; position += 1) {
        const letter = arg[position] ?? '';
        const spec = specs.find((candidate) => candidate.short === letter);
        if (!spec) throw new CliUsageError(`invalid option -- '${letter}'`);
        if (!spec.takesValue) {
          add(spec, '');
          continue;
        }
        const attached = arg.slice(position + 1);
        if (attached) {
          add(spec, attached);
        } else {
          const value = argv[index];
          if (value === undefined) throw new CliUsageError(`option requires an argument -- '${letter}'`);
          index += 1;
          add(spec, value);
        }
        break;
      }
      continue;
    }
    operands.push(arg);
  }
  return { options, operands };
}

/** The last value given for `key`, or undefined. */
export function lastValue(parsed: ParsedArgs, key: string): string | undefined {
  const list = parsed.options.get(key);
  return list?.[list.length - 1];
}

/** Whether a flag was given at least once. */
export function hasFlag(parsed: ParsedArgs, key: string): boolean {
  return parsed.options.has(key);
}

/**
 * Options shared by every command: `-h/--help`, `-q`, `--object` (secrets are defined by runCli through
 * image-opts.ts), `-U` (no locks here), `--image-opts` (operands are option lists, see openForCli).
 */
export const COMMON_OPTIONS: readonly OptionSpec[] = [
  { short: 'h', long: 'help', takesValue: false },
  { short: 'q', takesValue: false, key: 'quiet' },
  { long: 'object', takesValue: true },
  { short: 'U', long: 'force-share', takesValue: false },
  { long: 'image-opts', takesValue: false },
];
