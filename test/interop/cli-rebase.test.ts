// vdisk rebase against qemu-img 7.2: safe mode keeps the guest content (qemu-img compare of the image
// before and after), records the new backing file and format (qemu-img info) and leaves a clean image
// (qemu-img check); -u changes only the reference; -b "" flattens; errors as qemu-img's.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-rebase.test.ts');

interface QemuInfo {
  'backing-filename'?: string;
  'backing-filename-format'?: string;
}

function info(path: string): QemuInfo {
  return JSON.parse(mustRun('qemu-img', ['info', '--output=json', path])) as QemuInfo;
}

function expectClean(path: string): void {
  expect(tool('qemu-img', ['check', '-f', 'qcow2', path]).code).toBe(0);
}

describe.skipIf(!HAS_QEMU)('vdisk rebase, checked by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-rebase'));
  });
  afterAll(async () => {
    await cleanup();
  });

  /** old.qcow2 and new.raw differ at 0-1M and 6M-7M (new.raw is shorter); top.qcow2 has data at 512k-1.5M. */
  function chain(name: string, version: '0.10' | '1.1' = '1.1'): { top: string; before: string } {
    const old = join(dir, `${name}-old.qcow2`);
    const fresh = join(dir, `${name}-new.raw`);
    const top = join(dir, `${name}-top.qcow2`);
    const before = join(dir, `${name}-before.raw`);
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', old, '8M']);
    mustRun('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x11 0 1M',
      '-c',
      'write -P 0x22 3M 1M',
      '-c',
      'write -P 0x33 6M 1M',
      old,
    ]);
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', fresh, '7M']);
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 3M 1M', '-c', 'write -P 0x44 6M 1000', fresh]);
    mustRun('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      `compat=${version}`,
      '-b',
      `${name}-old.qcow2`,
      '-F',
      'qcow2',
      top,
    ]);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 512k 1M', top]);
    mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', top, before]);
    return { top, before };
  }

  for (const version of ['1.1', '0.10'] as const) {
    it(`safe mode keeps the content and records the new backing (compat=${version})`, async () => {
      const { top, before } = chain(`safe-${version}`, version);
      const result = await vdisk(['rebase', '-b', `safe-${version}-new.raw`, '-F', 'raw', top]);
      expect(result).toEqual({ code: 0, stdout: '', stderr: '' });
      expect(info(top)['backing-filename']).toBe(`safe-${version}-new.raw`);
      expect(info(top)['backing-filename-format']).toBe('raw');
      expectClean(top);
      expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top, before]).code).toBe(0);
      // Only what differs was copied: 3M-4M is the same in both backings and stays unallocated.
      const map = JSON.parse(mustRun('qemu-img', ['map', '--output=json', top])) as {
        start: number;
        depth: number;
        data: boolean;
      }[];
      const at3M = map.find(
        (entry) =>
          entry.start <= 3 * 2 ** 20 &&
          3 * 2 ** 20 < entry.start + (entry as unknown as { length: number }).length,
      );
      expect(at3M?.depth).toBe(1);
    });
  }

  it('-b "" flattens: the content is copied in and the backing file is gone', async () => {
    const { top, before } = chain('flatten');
    const flattened = await vdisk(['rebase', '-p', '-b', '', top]);
    expect(flattened.code).toBe(0);
    expect(flattened.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r.* {4}\(100\.00\/100%\)\r\n$/s);
    expect(info(top)['backing-filename']).toBeUndefined();
    expectClean(top);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top, before]).code).toBe(0);
  });

  it('-u changes only the reference', async () => {
    const { top, before } = chain('unsafe');
    const mapBefore = mustRun('qemu-img', ['map', '--output=json', '-f', 'qcow2', top]);
    expect((await vdisk(['rebase', '-u', '-b', 'unsafe-new.raw', '-F', 'raw', top])).code).toBe(0);
    expect(info(top)['backing-filename']).toBe('unsafe-new.raw');
    expectClean(top);
    // The image's own clusters did not change (past new.raw's end qemu-img map shows a zero hole); the
    // guest now sees new.raw where the image has no data.
    const layer = (text: string) =>
      (JSON.parse(text) as { depth: number; present: boolean }[]).filter(
        (entry) => entry.depth === 0 && entry.present,
      );
    expect(layer(mustRun('qemu-img', ['map', '--output=json', '-f', 'qcow2', top]))).toEqual(
      layer(mapBefore),
    );
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top, before]).code).toBe(1);
    // And back again with qemu-img's own -u: the original content returns.
    mustRun('qemu-img', ['rebase', '-u', '-b', 'unsafe-old.qcow2', '-F', 'qcow2', top]);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top, before]).code).toBe(0);
    expect((await vdisk(['rebase', '-u', '-b', '', top])).code).toBe(0);
    expect(info(top)['backing-filename']).toBeUndefined();
    expectClean(top);
  });

  it('gives the same content as qemu-img rebase of the same image', async () => {
    const { top } = chain('same');
    const theirs = join(dir, 'same-theirs.qcow2');
    mustRun('cp', [top, theirs]);
    expect((await vdisk(['rebase', '-b', 'same-new.raw', '-F', 'raw', top])).code).toBe(0);
    mustRun('qemu-img', ['rebase', '-b', 'same-new.raw', '-F', 'raw', theirs]);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', top, theirs]).code).toBe(0);
    const layer = (path: string) =>
      (
        JSON.parse(mustRun('qemu-img', ['map', '--output=json', path])) as {
          depth: number;
          start: number;
          length: number;
        }[]
      )
        .filter((entry) => entry.depth === 0)
        .map(({ start, length }) => ({ start, length }));
    expect(layer(top)).toEqual(layer(theirs));
  });

  it('rebases a qed image (safe and -u), writing the header qemu-img writes', async () => {
    const old = join(dir, 'qed-old.qcow2');
    const fresh = join(dir, 'qed-new.raw');
    const top = join(dir, 'qed-top.qed');
    const theirs = join(dir, 'qed-theirs.qed');
    const before = join(dir, 'qed-before.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', old, '4M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 2M', old]);
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', fresh, '4M']);
    mustRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 1M 1M', fresh]);
    mustRun('qemu-img', ['create', '-q', '-f', 'qed', '-b', 'qed-old.qcow2', '-F', 'qcow2', top]);
    mustRun('qemu-io', ['-f', 'qed', '-c', 'write -P 0x22 1536k 1M', top]);
    mustRun('qemu-img', ['convert', '-O', 'raw', top, before]);
    mustRun('cp', [top, theirs]);
    expect((await vdisk(['rebase', '-f', 'qed', '-b', 'qed-new.raw', '-F', 'raw', top])).code).toBe(0);
    mustRun('qemu-img', ['rebase', '-f', 'qed', '-b', 'qed-new.raw', '-F', 'raw', theirs]);
    expect(info(top)['backing-filename']).toBe('qed-new.raw');
    expect(info(top)['backing-filename-format']).toBe('raw');
    expect(tool('qemu-img', ['check', '-f', 'qed', top]).code).toBe(0);
    expect(tool('qemu-img', ['compare', '-f', 'qed', '-F', 'raw', top, before]).code).toBe(0);
    const head = (path: string) => readFileSync(path).subarray(0, 4096);
    expect(head(top).equals(head(theirs))).toBe(true);
    expect((await vdisk(['rebase', '-u', '-b', 'qed-old.qcow2', '-F', 'qcow2', top])).code).toBe(0);
    mustRun('qemu-img', ['rebase', '-u', '-b', 'qed-old.qcow2', '-F', 'qcow2', theirs]);
    expect(head(top).equals(head(theirs))).toBe(true);
    expect(info(top)['backing-filename']).toBe('qed-old.qcow2');
  });

  it('exits 1 as qemu-img does for a missing -F, -b or new backing file', async () => {
    const { top } = chain('errors');
    const cases: [string[], RegExp][] = [
      [['rebase', '-b', 'errors-new.raw', top], /backing format must be specified/],
      [['rebase', '-u', '-b', 'errors-new.raw', top], /backing format must be specified/],
      [['rebase', top], /Must specify backing file \(-b\) or use unsafe mode \(-u\)/],
      [
        ['rebase', '-b', 'missing.qcow2', '-F', 'qcow2', top],
        /Could not open new backing file 'missing.qcow2'/,
      ],
    ];
    for (const [args, message] of cases) {
      const result = await vdisk(args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stderr).toMatch(message);
      expect(tool('qemu-img', args).code, `qemu-img ${args.join(' ')}`).toBe(1);
    }
    expect(info(top)['backing-filename']).toBe('errors-old.qcow2');
    expectClean(top);
  });
});
