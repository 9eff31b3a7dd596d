// Size strings as the CLI takes them (qemu_strtosz: binary suffixes, fractions with a unit) and
// human sizes as qemu prints them (size_to_str); test/interop/cli-sizes-raw.test.ts checks the
// latter against qemu-img itself over many sizes.

import { describe, expect, it } from 'vitest';
import { parseImageSize } from '../../../src/cli/commands/create.ts';
import { parseSparseSize } from '../../../src/cli/commands/convert.ts';
import { formatHumanSize, parseSize } from '../../../src/engine/size.ts';

describe('size strings', () => {
  it('parses bytes and binary suffixes, fractions with a unit', () => {
    expect(parseSize('512')).toBe(512);
    expect(parseSize('4k')).toBe(4096);
    expect(parseSize('4K')).toBe(4096);
    expect(parseSize('1.5M')).toBe(1.5 * 1024 * 1024);
    expect(parseSize('4G')).toBe(4 * 1024 ** 3);
    expect(parseSize('2T')).toBe(2 * 1024 ** 4);
    expect(parseSize('100b')).toBe(100);
  });

  it('rejects garbage, fractions of bytes and sizes past 2^53 with InvalidOptionError', () => {
    for (const text of ['', 'abc', '12Q', '1.5', '-1', '1e9', '9E']) {
      expect(() => parseSize(text), text).toThrow(expect.objectContaining({ code: 'VDISK_EINVAL' }));
    }
  });

  it('gives qemu-img create its own size message, and -S its 512-byte rule', () => {
    expect(() => parseImageSize('-5M')).toThrow(
      expect.objectContaining({
        code: 'VDISK_EINVAL',
        message: expect.stringContaining('Invalid image size specified'),
      }),
    );
    expect(parseImageSize('1.5M')).toBe(1572864);
    expect(parseSparseSize('4k')).toBe(4096);
    expect(parseSparseSize('0')).toBe(0);
    expect(() => parseSparseSize('1000')).toThrow(expect.objectContaining({ name: 'CliUsageError' }));
    expect(() => parseSparseSize('32M')).toThrow(expect.objectContaining({ name: 'CliUsageError' }));
  });
});

describe('formatHumanSize', () => {
  it('prints three significant digits with binary units, as qemu does', () => {
    expect(formatHumanSize(0)).toBe('0 B');
    expect(formatHumanSize(512)).toBe('512 B');
    expect(formatHumanSize(1000)).toBe('0.977 KiB');
    expect(formatHumanSize(16384)).toBe('16 KiB');
    expect(formatHumanSize(1572864)).toBe('1.5 MiB');
    expect(formatHumanSize(4 * 1024 ** 3)).toBe('4 GiB');
  });
});
