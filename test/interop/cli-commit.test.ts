// vdisk commit against qemu-img 7.2: the base ends up with the same content as `qemu-img commit` of a
// copy gives (qemu-img compare), the top is emptied as qemu-img leaves it (qemu-img map: no data of
// its own) unless -d or -b, the base grows when smaller, and `qemu-img check` is clean on every file.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-commit.test.ts');

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  data: boolean;
}

function ownExtents(path: string): MapEntry[] {
  return (JSON.parse(mustRun('qemu-img', ['map', '--output=json', path])) as MapEntry[]).filter(
    (entry) => entry.depth === 0 && entry.present,
  );
}

function expectClean(...paths: string[]): void {
  for (const path of paths) expect(tool('qemu-img', ['check', path]).code, path).toBe(0);
}

function same(a: string, b: string): number {
  return tool('qemu-img', ['compare', a, b]).code;
}

describe.skipIf(!HAS_QEMU)('vdisk commit, checked by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-commit'));
  });
  afterAll(async () => {
    await cleanup();
  });

  /** base (4M, qcow2) <- mid (8M) <- top, each with data of its own, a zero range and a discard in top. */
  function chain(name: string): { base: string; mid: string; top: string } {
    const base = join(dir, `${name}-base.qcow2`);
    const mid = join(dir, `${name}-mid.qcow2`);
    const top = join(dir, `${name}-top.qcow2`);
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 3M', base]);
    mustRun('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      `${name}-base.qcow2`,
      '-F',
      'qcow2',
      mid,
      '8M',
    ]);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 1M 1M', '-c', 'write -P 0x23 5M 512k', mid]);
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `${name}-mid.qcow2`, '-F', 'qcow2', top]);
    mustRun('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x33 1536k 1M',
      '-c',
      'write -z 2816k 128k',
      '-c',
      'write -P 0x34 7M 4k',
      top,
    ]);
    return { base, mid, top };
  }

  function copyChain(from: string, to: string): { base: string; mid: string; top: string } {
    for (const layer of ['base', 'mid', 'top']) {
      mustRun('cp', [join(dir, `${from}-${layer}.qcow2`), join(dir, `${to}-${layer}.qcow2`)]);
    }
    // The copies still name the originals' files: point them at their own.
    const mid = join(dir, `${to}-mid.qcow2`);
    const top = join(dir, `${to}-top.qcow2`);
    mustRun('qemu-img', ['rebase', '-u', '-b', `${to}-base.qcow2`, '-F', 'qcow2', mid]);
    mustRun('qemu-img', ['rebase', '-u', '-b', `${to}-mid.qcow2`, '-F', 'qcow2', top]);
    return { base: join(dir, `${to}-base.qcow2`), mid, top };
  }

  it('commits into the backing file and empties the image, as qemu-img commit does', async () => {
    const ours = chain('one');
    const theirs = copyChain('one', 'one-q');
    const before = join(dir, 'one-before.raw');
    mustRun('qemu-img', ['convert', '-O', 'raw', ours.top, before]);
    const result = await vdisk(['commit', ours.top]);
    expect(result).toEqual({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    expect(mustRun('qemu-img', ['commit', theirs.top])).toBe('Image committed.\n');
    expect(same(ours.mid, theirs.mid)).toBe(0);
    expect(same(ours.top, before)).toBe(0);
    expect(ownExtents(ours.top)).toEqual([]);
    expect(ownExtents(theirs.top)).toEqual([]);
    expect(same(ours.base, theirs.base)).toBe(0);
    expectClean(ours.base, ours.mid, ours.top);
  });

  it('empties an image with an internal snapshot and keeps the snapshot whole', async () => {
    const ours = chain('snap');
    const before = join(dir, 'snap-before.raw');
    mustRun('qemu-img', ['convert', '-O', 'raw', ours.top, before]);
    mustRun('qemu-img', ['snapshot', '-c', 'kept', ours.top]);
    expect((await vdisk(['commit', '-q', ours.top])).code).toBe(0);
    expect(ownExtents(ours.top)).toEqual([]);
    expectClean(ours.top, ours.mid);
    mustRun('qemu-img', ['snapshot', '-a', 'kept', ours.top]);
    expect(ownExtents(ours.top).length).toBeGreaterThan(0);
    expect(same(ours.top, before)).toBe(0);
    expectClean(ours.top);
  });

  it('-d leaves the image as it was', async () => {
    const ours = chain('keep');
    const theirs = copyChain('keep', 'keep-q');
    const ownBefore = ownExtents(ours.top);
    expect((await vdisk(['commit', '-q', '-d', ours.top])).stdout).toBe('');
    mustRun('qemu-img', ['commit', '-q', '-d', theirs.top]);
    expect(same(ours.mid, theirs.mid)).toBe(0);
    expect(ownExtents(ours.top)).toEqual(ownBefore);
    expectClean(ours.mid, ours.top);
  });

  it('-b commits every layer above the base into it and grows the base', async () => {
    const ours = chain('deep');
    const theirs = copyChain('deep', 'deep-q');
    const before = join(dir, 'deep-before.raw');
    mustRun('qemu-img', ['convert', '-O', 'raw', ours.top, before]);
    // The base named as the chain names it (relative to the image's folder), as qemu-img accepts it.
    expect((await vdisk(['commit', '-b', 'deep-base.qcow2', ours.top])).code).toBe(0);
    mustRun('qemu-img', ['commit', '-b', theirs.base, theirs.top]);
    expect(same(ours.base, theirs.base)).toBe(0);
    expect(tool('qemu-img', ['compare', '-F', 'raw', ours.base, before]).code).toBe(0);
    const size = (path: string) =>
      (JSON.parse(mustRun('qemu-img', ['info', '--output=json', path])) as { 'virtual-size': number })[
        'virtual-size'
      ];
    expect(size(ours.base)).toBe(size(theirs.base));
    // -b implies -d: the top keeps its data.
    expect(ownExtents(ours.top).length).toBeGreaterThan(0);
    expectClean(ours.base, ours.mid, ours.top);
  });

  it('commits a qed image and leaves it as it was, as qemu-img does (qed cannot be emptied)', async () => {
    const base = join(dir, 'qed-base.qcow2');
    const top = join(dir, 'qed-top.qed');
    const theirsBase = join(dir, 'qed-q-base.qcow2');
    const theirsTop = join(dir, 'qed-q-top.qed');
    const before = join(dir, 'qed-before.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', base]);
    mustRun('qemu-img', ['create', '-q', '-f', 'qed', '-b', 'qed-base.qcow2', '-F', 'qcow2', top]);
    mustRun('qemu-io', ['-f', 'qed', '-c', 'write -P 0x22 1M 1M', top]);
    mustRun('qemu-img', ['convert', '-O', 'raw', top, before]);
    mustRun('cp', [base, theirsBase]);
    mustRun('qemu-img', ['create', '-q', '-f', 'qed', '-b', 'qed-q-base.qcow2', '-F', 'qcow2', theirsTop]);
    mustRun('qemu-io', ['-f', 'qed', '-c', 'write -P 0x22 1M 1M', theirsTop]);
    expect(await vdisk(['commit', top])).toEqual({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    expect(mustRun('qemu-img', ['commit', theirsTop])).toBe('Image committed.\n');
    expect(tool('qemu-img', ['compare', '-F', 'raw', base, before]).code).toBe(0);
    expect(same(base, theirsBase)).toBe(0);
    expect(ownExtents(top)).toEqual(ownExtents(theirsTop));
    expect(ownExtents(top).length).toBeGreaterThan(0);
    expectClean(base, top);
  });

  it('exits 1 as qemu-img does without a backing file or with a base outside the chain', async () => {
    const { base, top } = chain('errors');
    const cases: [string[], RegExp][] = [
      [['commit', base], /Image does not have a backing file/],
      [['commit', '-b', join(dir, 'nope.qcow2'), top], /Did not find '.*nope.qcow2' in the backing chain/],
      [['commit'], /Expecting one image file name/],
    ];
    for (const [args, message] of cases) {
      const result = await vdisk(args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stderr).toMatch(message);
      expect(tool('qemu-img', args).code, `qemu-img ${args.join(' ')}`).toBe(1);
    }
  });
});
