// Crash consistency of the whole-image metadata operations behind rebase, commit and amend: makeEmpty,
// setBackingFile and amend (compat up and down, with zero-cluster expansion; refcount_bits). A HostFile that silently
// stops persisting after its N-th write is swept over each; every result must pass `qemu-img check`
// (leaks allowed) and read as before (these operations never change the guest content), and a
// rewritten header names either the old backing file or the new one.

import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../../src/engine/block-device.ts';
import { has, run, runStatus, scratchDir } from '../../../../helpers/format-harness.ts';
import { runCutOperation } from '../../../../helpers/cutting-file.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED qcow2 metadata-crash.test.ts: qemu-img not found (apt-get install qemu-utils)');

type Operation = (device: BlockDevice) => Promise<void>;

describe.skipIf(!HAS_QEMU)('qcow2 metadata operations survive a crash after any write', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
  });
  afterAll(async () => cleanup());

  /** base.raw is 0x61 everywhere; the top holds copies of base bytes, zero clusters (v3) and its own data. */
  function build(name: string, compat: '0.10' | '1.1', withOwnData: boolean): string {
    const base = join(dir, `${name}-base.raw`);
    const top = join(dir, `${name}.qcow2`);
    run('qemu-img', ['create', '-q', '-f', 'raw', base, '2M']);
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 2M', base]);
    run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      `compat=${compat}`,
      '-b',
      `${name}-base.raw`,
      '-F',
      'raw',
      top,
    ]);
    const commands = ['-c', 'write -P 0x61 0 200k', '-c', 'write -P 0x61 1M 64k'];
    if (withOwnData) commands.push('-c', 'write -P 0x33 1536k 100k');
    if (withOwnData && compat === '1.1') commands.push('-c', 'write -z 384k 128k', '-c', 'write -z 700k 1k');
    run('qemu-io', ['-f', 'qcow2', ...commands, top]);
    return top;
  }

  const runCut = (path: string, cut: number, operation: Operation): Promise<number> =>
    runCutOperation(path, cut, operation, { noBacking: true });

  async function sweep(
    name: string,
    compat: '0.10' | '1.1',
    withOwnData: boolean,
    operation: Operation,
    backingNames: string[],
    rebuild = true,
  ): Promise<void> {
    const pristine = rebuild ? build(name, compat, withOwnData) : join(dir, `${name}.qcow2`);
    const dry = join(dir, `${name}-dry.qcow2`);
    await copyFile(pristine, dry);
    const totalWrites = await runCut(dry, Number.POSITIVE_INFINITY, operation);
    expect(totalWrites).toBeGreaterThan(0);
    for (let cut = 0; cut <= totalWrites; cut++) {
      const path = join(dir, `${name}-cut.qcow2`);
      await copyFile(pristine, path);
      await runCut(path, cut, operation);
      const check = runStatus('qemu-img', ['check', '--output=json', path]);
      const report = JSON.parse(check.stdout || '{}') as { corruptions?: number; 'check-errors'?: number };
      const clean =
        (report.corruptions ?? 0) === 0 &&
        (report['check-errors'] ?? 0) === 0 &&
        (check.status === 0 || check.status === 3);
      if (!clean)
        expect({ cut, qemu: runStatus('qemu-img', ['check', path]).stdout }).toEqual({ cut, qemu: 'clean' });
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as {
        'backing-filename'?: string;
      };
      expect(backingNames, `cut ${cut}`).toContain(info['backing-filename'] ?? '');
      // Content as before, read through whichever backing file the header names (both read the same).
      const same = runStatus('qemu-img', ['compare', path, pristine]);
      expect({ cut, status: same.status, out: same.stdout }).toMatchObject({ cut, status: 0 });
    }
  }

  it(
    'makeEmpty of a top whose data the base already holds (commit)',
    () => sweep('empty', '1.1', false, async (device) => device.makeEmpty?.(), [`empty-base.raw`]),
    120_000,
  );
  it('setBackingFile to a copy of the base under a longer name (rebase -u)', async () => {
    const operation: Operation = async (device) => {
      await device.setBackingFile?.('rename-base-copy-with-a-longer-name.raw', 'raw');
    };
    run('cp', [join(dir, 'empty-base.raw'), join(dir, 'rename-base-copy-with-a-longer-name.raw')]);
    await sweep('rename', '1.1', true, operation, [
      'rename-base.raw',
      'rename-base-copy-with-a-longer-name.raw',
    ]);
  }, 120_000);
  it(
    'amend compat=0.10 (zero clusters expanded)',
    () => sweep('down', '1.1', true, async (device) => device.amend?.({ compat: '0.10' }), ['down-base.raw']),
    120_000,
  );
  it(
    'amend compat=1.1,lazy_refcounts=on',
    () =>
      sweep('up', '0.10', true, async (device) => device.amend?.({ compat: '1.1', lazy_refcounts: 'on' }), [
        'up-base.raw',
      ]),
    120_000,
  );
});
