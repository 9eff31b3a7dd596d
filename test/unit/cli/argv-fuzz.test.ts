// Random argv for the image commands never escapes as an exception or an "internal error": every
// run ends with one of qemu-img's exit statuses. The test runs from a scratch folder, so whatever
// the generated command creates or converts stays there.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../../src/cli/main.ts';

let folder: string;
let previousFolder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-argv-'));
  // Generated operands may be bare names (`4k`, `raw`): run from the scratch folder so they land there.
  previousFolder = process.cwd();
  process.chdir(folder);
  await writeFile(join(folder, 'a.raw'), Buffer.alloc(64 * 1024, 7));
  await writeFile(join(folder, 'junk.img'), Buffer.from('QFI\xfb garbage that claims to be qcow2'));
});
afterAll(async () => {
  process.chdir(previousFolder);
  await rm(folder, { recursive: true, force: true });
});

const tokens = (dir: () => string) =>
  fc.oneof(
    fc.constantFrom(
      '-f',
      '-O',
      '-o',
      '-c',
      '-p',
      '-q',
      '-n',
      '-W',
      '-S',
      '-m',
      '-B',
      '-F',
      '-s',
      '-r',
      '-u',
      '-b',
      '-l',
    ),
    fc.constantFrom(
      '--output=json',
      '--output=human',
      '--output',
      '--backing-chain',
      '--size',
      '--start-offset=4k',
      '--max-length',
      '--target-is-zero',
      '--help',
      '--',
      '-',
    ),
    fc.constantFrom(
      'raw',
      'qcow2',
      'vdi',
      'nosuch',
      'json',
      'leaks',
      'all',
      '0',
      '4k',
      '1M',
      '17',
      '-1',
      '1.5G',
      'help',
      'size=1M',
      'cluster_size=512',
      'preallocation=full',
    ),
    fc
      .constantFrom('a.raw', 'junk.img', 'missing.raw', 'out.raw', 'out.qcow2')
      .map((name) => join(dir(), name)),
    fc.string({ maxLength: 6 }),
  );

describe('argv fuzz', () => {
  it('ends every image command with an exit status, never a throw', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('create', 'info', 'convert', 'check', 'compare', 'map', 'measure'),
        fc.array(
          tokens(() => folder),
          { maxLength: 7 },
        ),
        async (command, args) => {
          const code = await runCli([command, ...args], {
            stdout: () => undefined,
            stderr: () => undefined,
            isTty: false,
          });
          expect([0, 1, 2, 3, 63]).toContain(code);
        },
      ),
      { numRuns: 150, seed: 20261126 },
    );
  });
});
