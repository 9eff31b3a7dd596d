// The CLI's getopt: qemu-img's spellings (combined flags, attached values, long options with = or a
// separate value, options after operands, `--`) and its usage errors.

import { describe, expect, it } from 'vitest';
import { parseOptionList } from '../../../src/cli/common.ts';
import { getopt, hasFlag, lastValue, type OptionSpec } from '../../../src/cli/getopt.ts';

const specs: OptionSpec[] = [
  { short: 'f', takesValue: true, key: 'format' },
  { short: 'O', takesValue: true, key: 'output-format' },
  { short: 'c', takesValue: false, key: 'compress' },
  { short: 'p', takesValue: false, key: 'progress' },
  { long: 'output', takesValue: true },
  { long: 'backing-chain', takesValue: false },
];

describe('getopt', () => {
  it('splits combined short flags and takes an attached value', () => {
    const parsed = getopt(['-cpOqcow2', 'in', 'out'], specs);
    expect(hasFlag(parsed, 'compress')).toBe(true);
    expect(hasFlag(parsed, 'progress')).toBe(true);
    expect(lastValue(parsed, 'output-format')).toBe('qcow2');
    expect(parsed.operands).toEqual(['in', 'out']);
  });

  it('takes separate values, long options both ways, and options after operands', () => {
    const parsed = getopt(
      ['in', '-f', 'raw', '--output', 'json', '--backing-chain', '--output=human'],
      specs,
    );
    expect(lastValue(parsed, 'format')).toBe('raw');
    expect(parsed.options.get('output')).toEqual(['json', 'human']);
    expect(lastValue(parsed, 'output')).toBe('human');
    expect(hasFlag(parsed, 'backing-chain')).toBe(true);
    expect(parsed.operands).toEqual(['in']);
  });

  it('stops at -- so operands may start with a dash', () => {
    expect(getopt(['-c', '--', '-odd-name', 'x'], specs).operands).toEqual(['-odd-name', 'x']);
  });

  it('rejects unknown options and missing values with CliUsageError', () => {
    expect(() => getopt(['-z'], specs)).toThrow(
      expect.objectContaining({ name: 'CliUsageError', message: "invalid option -- 'z'" }),
    );
    expect(() => getopt(['--nope'], specs)).toThrow(expect.objectContaining({ name: 'CliUsageError' }));
    expect(() => getopt(['-f'], specs)).toThrow(
      expect.objectContaining({ message: "option requires an argument -- 'f'" }),
    );
    expect(() => getopt(['--output'], specs)).toThrow(expect.objectContaining({ name: 'CliUsageError' }));
    expect(() => getopt(['--backing-chain=yes'], specs)).toThrow(
      expect.objectContaining({ name: 'CliUsageError' }),
    );
  });
});

describe('parseOptionList (-o)', () => {
  it('splits on commas, keeps ,, as a literal comma, and joins repeated -o', () => {
    expect(parseOptionList(['cluster_size=65536,lazy_refcounts=on', 'backing_file=a,,b.img'])).toEqual({
      cluster_size: '65536',
      lazy_refcounts: 'on',
      backing_file: 'a,b.img',
    });
  });

  it('treats a bare name as on, and help as a request', () => {
    expect(parseOptionList(['help'])).toEqual({ help: 'on' });
  });
});
