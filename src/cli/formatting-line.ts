// The "Formatting 'x', fmt=... size=..." line qemu-img create prints: qemu_opts_print walks the
// format's create-option list in its own order, printing every option that is set or has a default
// (sizes as plain byte counts). The orders and defaults below are qemu 7.2's, read from its output.

import { parseSize } from '../engine/size.ts';

interface FormatOrder {
  /** Option names in qemu's print order; `encrypt.*` stands for every encrypt.<key> given. */
  order: readonly string[];
  /** Defaults qemu prints when the option is not given. */
  defaults: Readonly<Record<string, string>>;
}

const QEMU_CREATE_ORDER: Readonly<Record<string, FormatOrder>> = {
  qcow2: {
    order: [
      'encryption',
      'encrypt.*',
      'cluster_size',
      'extended_l2',
      'preallocation',
      'compression_type',
      'size',
      'compat',
      'backing_file',
      'backing_fmt',
      'data_file',
      'data_file_raw',
      'lazy_refcounts',
      'refcount_bits',
    ],
    defaults: {
      cluster_size: '65536',
      extended_l2: 'off',
      compression_type: 'zlib',
      lazy_refcounts: 'off',
      refcount_bits: '16',
    },
  },
  raw: { order: ['size', 'preallocation'], defaults: {} },
  vdi: { order: ['size', 'static'], defaults: { static: 'off' } },
  vpc: { order: ['size', 'subformat', 'force_size'], defaults: {} },
  qed: {
    order: ['size', 'backing_file', 'backing_fmt', 'cluster_size', 'table_size'],
    defaults: { cluster_size: '65536' },
  },
  vmdk: {
    order: [
      'size',
      'adapter_type',
      'backing_file',
      'backing_fmt',
      'compat6',
      'hwversion',
      'toolsversion',
      'subformat',
      'zeroed_grain',
    ],
    defaults: { compat6: 'off', hwversion: 'undefined' },
  },
  vhdx: {
    order: ['size', 'log_size', 'block_size', 'subformat', 'block_state_zero'],
    defaults: { log_size: '1048576', block_size: '0' },
  },
  parallels: { order: ['size', 'cluster_size'], defaults: { cluster_size: '1048576' } },
  qcow: { order: ['size', 'backing_file', 'backing_fmt', 'encryption', 'encrypt.*'], defaults: {} },
};

/** Options qemu stores as sizes, printed as byte counts whatever suffix the user typed. */
const SIZE_OPTIONS: ReadonlySet<string> = new Set(['size', 'cluster_size', 'log_size', 'block_size']);

function shown(name: string, value: string): string {
  if (!SIZE_OPTIONS.has(name)) return value;
  try {
    return String(parseSize(value, name));
  } catch {
    return value;
  }
}

/** qemu-img create's line for `path` of `format`, with `options` as given (size and backing included). */
export function formattingLine(
  path: string,
  format: string,
  options: Readonly<Record<string, string>>,
): string {
  const table = QEMU_CREATE_ORDER[format] ?? { order: ['size'], defaults: {} };
  const printed: string[] = [];
  const done = new Set<string>();
  for (const name of table.order) {
    if (name === 'encrypt.*') {
      for (const key of Object.keys(options).filter((key) => key.startsWith('encrypt.'))) {
        printed.push(`${key}=${options[key]}`);
        done.add(key);
      }
      continue;
    }
    const value = options[name] ?? table.defaults[name];
    done.add(name);
    if (value !== undefined) printed.push(`${name}=${shown(name, value)}`);
  }
  for (const [name, value] of Object.entries(options))
    if (!done.has(name)) printed.push(`${name}=${shown(name, value)}`);
  return `Formatting '${path}', fmt=${format} ${printed.join(' ')}`;
}
