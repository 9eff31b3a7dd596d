// Size strings as qemu-img takes them: `4G`, `512M`, `1.5G`, `+1G`, `-512M`, plain bytes, `k`/`K`
// suffixes and `b` for bytes. Units are binary (1K = 1024), as qemu's qemu_strtosz() has them.

import { InvalidOptionError } from './errors.ts';

const UNIT_SHIFT: Record<string, number> = { b: 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 };

/** Largest size vdisk accepts: JS numbers are exact to 2^53; qemu's own limit is INT64_MAX. */
export const MAX_SIZE_BYTES = Number.MAX_SAFE_INTEGER;

/**
 * Parses an unsigned size; `defaultUnit` applies when no suffix is given (bytes for qemu-img sizes).
 * Throws InvalidOptionError (`option` names the flag or field) for anything else.
 */
export function parseSize(text: string, option = 'size', defaultUnit: keyof typeof UNIT_SHIFT = 'b'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([bBkKmMgGtTpPeE]?)\s*$/.exec(text);
  if (!match) {
    throw new InvalidOptionError({
      option,
      value: text,
      message: `Invalid ${option} '${text}': expected a number with an optional k, M, G, T, P or E suffix`,
    });
  }
  const [, digits = '', unit = ''] = match;
  const shift = UNIT_SHIFT[(unit || defaultUnit).toLowerCase()] ?? 0;
  if (digits.includes('.') && shift === 0) {
    throw new InvalidOptionError({
      option,
      value: text,
      message: `Invalid ${option} '${text}': a fraction needs a unit suffix`,
    });
  }
  const value = Number(digits) * 2 ** shift;
  const bytes = Math.floor(value);
  if (!Number.isFinite(value) || bytes > MAX_SIZE_BYTES) {
    throw new InvalidOptionError({
      option,
      value: text,
      message: `Invalid ${option} '${text}': larger than ${MAX_SIZE_BYTES} bytes`,
    });
  }
  return bytes;
}

/** A size-valued `-o` option: `options[name]` parsed as a size, or `fallback` when it is not given. */
export function sizeOption(options: Record<string, string>, name: string, fallback: number): number {
  const text = options[name];
  return text === undefined ? fallback : parseSize(text, name);
}

/** A resize argument: absolute (`4G`) or relative (`+1G`, `-512M`). */
export function parseSizeChange(text: string, option = 'size'): { relative: -1 | 0 | 1; bytes: number } {
  const sign = text.trim()[0];
  if (sign === '+' || sign === '-') {
    return { relative: sign === '+' ? 1 : -1, bytes: parseSize(text.trim().slice(1), option) };
  }
  return { relative: 0, bytes: parseSize(text, option) };
}

/** qemu's human size (size_to_str): `4 GiB`, `1.5 MiB`, `512 B`, `0.977 KiB`; %0.3g of the value. */
export function formatHumanSize(bytes: number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  // Switch to the next unit once the integer part reaches 1000, as qemu does.
  const scaled = bytes / (1000 / 1024);
  const exponent = scaled === 0 ? 0 : Math.floor(Math.log2(scaled)) + 1; // frexp's exponent
  const index = Math.min(Math.max(Math.trunc((exponent - 1) / 10), 0), suffixes.length - 1);
  const value = bytes / 2 ** (index * 10);
  return `${Number(value.toPrecision(3))} ${suffixes[index]}B`;
}
