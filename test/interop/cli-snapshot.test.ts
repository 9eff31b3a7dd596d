// vdisk snapshot against qemu-img 7.2 in both directions: snapshots vdisk makes are listed, applied and
// deleted by qemu-img and the other way round, `-l` and `info` print what qemu-img prints for the same
// file (human table and JSON `snapshots`), errors exit 1, and `qemu-img check` stays clean throughout.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
warnMissing('qemu-img', 'cli-snapshot.test.ts');

function expectClean(path: string): void {
  const result = tool('qemu-img', ['check', '-f', 'qcow2', path]);
  expect(result.stdout).toMatch(/No errors were found on the image/);
  expect(result.code).toBe(0);
}

function snapshotsJson(text: string): unknown {
  return (JSON.parse(text) as { snapshots?: unknown }).snapshots;
}

describe.skipIf(!HAS_QEMU)('vdisk snapshot, checked by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('cli-snapshot'));
  });
  afterAll(async () => {
    await cleanup();
  });

  it('creates snapshots that qemu-img lists, applies and deletes', async () => {
    const path = join(dir, 'ours.qcow2');
    const pristine = join(dir, 'ours-pristine.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 5M 64k', path]);
    mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, pristine]);
    const created = await vdisk(['snapshot', '-c', 'before', path]);
    expect(created).toEqual({ code: 0, stdout: '', stderr: '' });
    expect((await vdisk(['snapshot', '-c', 'second', path])).code).toBe(0);
    expectClean(path);

    const listed = mustRun('qemu-img', ['snapshot', '-l', path]);
    expect(listed).toMatch(
      /^Snapshot list:\nID {8}TAG {15}VM SIZE {16}DATE {5}VM CLOCK {5}ICOUNT\n1 {9}before /,
    );
    expect((await vdisk(['snapshot', '-l', path])).stdout).toBe(listed);

    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 0 2M', path]);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, pristine]).code).toBe(1);
    mustRun('qemu-img', ['snapshot', '-a', 'before', path]);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, pristine]).code).toBe(0);
    mustRun('qemu-img', ['snapshot', '-d', 'before', path]);
    expectClean(path);
    expect((await vdisk(['snapshot', '-l', path])).stdout).toBe(
      mustRun('qemu-img', ['snapshot', '-l', path]),
    );
    expect(mustRun('qemu-img', ['snapshot', '-l', path])).toMatch(/\n2 {9}second /);
  });

  it("applies and deletes qemu-img's snapshots (apply by ID or name, delete by name)", async () => {
    const path = join(dir, 'theirs.qcow2');
    const pristine = join(dir, 'theirs-pristine.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M']);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 1M 3M', path]);
    mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, pristine]);
    mustRun('qemu-img', ['snapshot', '-c', 'base', path]);
    mustRun('qemu-img', ['snapshot', '-c', 'other', path]);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 8M', '-c', 'discard 12M 1M', path]);

    expect((await vdisk(['snapshot', '-a', '1', path])).code).toBe(0);
    expectClean(path);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, pristine]).code).toBe(0);
    mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x66 0 1M', path]);
    expect((await vdisk(['snapshot', '-a', 'other', path])).code).toBe(0);
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, pristine]).code).toBe(0);

    // As qemu-img: -d looks up names only, so an ID is "not found".
    const byId = await vdisk(['snapshot', '-d', '1', path]);
    expect(byId.code).toBe(1);
    expect(byId.stderr).toMatch(/Could not delete snapshot '1': snapshot not found/);
    expect(tool('qemu-img', ['snapshot', '-d', '1', path]).code).toBe(1);

    expect((await vdisk(['snapshot', '-d', 'base', path])).code).toBe(0);
    expectClean(path);
    expect(mustRun('qemu-img', ['snapshot', '-l', path])).not.toMatch(/base/);
    expect((await vdisk(['snapshot', '-d', 'other', path])).code).toBe(0);
    expectClean(path);
    expect(mustRun('qemu-img', ['snapshot', '-l', path])).toBe('');
    expect((await vdisk(['snapshot', '-l', path])).stdout).toBe('');
    expect(tool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, pristine]).code).toBe(0);
  });

  it("shows snapshots in info as qemu-img does (human section and JSON 'snapshots')", async () => {
    const path = join(dir, 'info.qcow2');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M']);
    mustRun('qemu-img', ['snapshot', '-c', 'made by qemu', path]);
    expect((await vdisk(['snapshot', '-c', 'made-by-vdisk', path])).code).toBe(0);
    const theirsJson = mustRun('qemu-img', ['info', '--output=json', path]);
    const oursJson = (await vdisk(['info', '--output=json', path])).stdout;
    expect(snapshotsJson(oursJson)).toEqual(snapshotsJson(theirsJson));
    // Key order too: the snapshot objects as text.
    const block = (text: string): string => text.slice(text.indexOf('"snapshots"'), text.indexOf(']') + 1);
    expect(block(oursJson)).toBe(block(theirsJson));
    const section = (text: string): string =>
      text.slice(text.indexOf('Snapshot list:'), text.indexOf('Format specific information:'));
    const theirsHuman = mustRun('qemu-img', ['info', path]);
    expect(section((await vdisk(['info', path])).stdout)).toBe(section(theirsHuman));
    expect(section(theirsHuman)).toMatch(/made-by-vdisk/);
  });

  it('exits 1 with qemu-img-like errors', async () => {
    const path = join(dir, 'errors.qcow2');
    const raw = join(dir, 'errors.raw');
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1M']);
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', raw, '1M']);
    const cases: [string[], RegExp][] = [
      [['snapshot', '-a', 'nope', path], /Could not apply snapshot 'nope'/],
      [['snapshot', '-d', 'nope', path], /Could not delete snapshot 'nope': snapshot not found/],
      [['snapshot', '-l', '-c', 'x', path], /Cannot mix '-l', '-a', '-c', '-d'/],
      [['snapshot', '-l'], /Expecting one image file name/],
      [['snapshot', '-l', path, raw], /Expecting one image file name/],
      [
        ['snapshot', '-f', 'raw', '-c', 'x', raw],
        /Could not create snapshot 'x': -95 \(Operation not supported\)/,
      ],
    ];
    for (const [args, message] of cases) {
      const result = await vdisk(args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stderr).toMatch(message);
      expect(tool('qemu-img', args).code, `qemu-img ${args.join(' ')}`).toBe(1);
    }
    expect((await vdisk(['snapshot', '-l', path])).stdout).toBe('');
    expect((await vdisk(['snapshot', path])).code).toBe(0);
  });
});
