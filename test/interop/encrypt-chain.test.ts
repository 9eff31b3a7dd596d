// commit and rebase of encrypted qcow2 chains opened with --image-opts and --object secret (issue 3),
// against qemu-img 7.2: qemu makes a LUKS-encrypted base and an encrypted overlay over it, vdisk
// commits the overlay into the base (or flattens it with rebase -b ""), and qemu then reads the result
// byte-exact with the chain's old content, `qemu-img check` clean.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { haveTools, run, runStatus, scratchDir, writeSeededRaw } from '../helpers/format-harness.ts';
import { imageOpts, qemuRun, secretObject } from '../helpers/qemu-crypto.ts';
import { runVdisk } from '../helpers/run-vdisk.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'encrypted chain commit/rebase interop tests');
const PASSPHRASE = 'chain passphrase';
const SIZE_BYTES = 4 * 1024 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let seed: string;
beforeAll(async () => {
  ({ dir, cleanup } = await scratchDir('crypt-chain'));
  seed = await writeSeededRaw(dir, 'seed.raw', SIZE_BYTES, 11);
});
afterAll(async () => {
  await cleanup();
});

/** qemu's image-opts for an encrypted qcow2 whose backing file uses the same secret. */
function chainOpts(path: string): string {
  return `${imageOpts(path, 'qcow2')},backing.encrypt.key-secret=sec0`;
}

/** base.qcow2 (seed.raw, encrypted) and top.qcow2 over it (encrypted), with qemu-io writes in the top. */
function makeChain(prefix: string): { base: string; top: string; expected: string } {
  const base = join(dir, `${prefix}-base.qcow2`);
  const top = join(dir, `${prefix}-top.qcow2`);
  const expected = join(dir, `${prefix}-expected.raw`);
  const luks = 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10';
  qemuRun('qemu-img', ['convert', ...secretObject(PASSPHRASE), '-O', 'qcow2', '-o', luks, seed, base]);
  qemuRun('qemu-img', [
    'create',
    ...secretObject(PASSPHRASE),
    '-f',
    'qcow2',
    '-b',
    base,
    '-F',
    'qcow2',
    '-o',
    luks,
    top,
  ]);
  qemuRun('qemu-io', [
    ...secretObject(PASSPHRASE),
    '--image-opts',
    chainOpts(top),
    '-c',
    'write -P 0x6b 65536 200000',
    '-c',
    'write -z 1048576 131072',
    '-c',
    'write -P 0x21 3000000 4096',
  ]);
  qemuRun('qemu-img', [
    'convert',
    ...secretObject(PASSPHRASE),
    '--image-opts',
    chainOpts(top),
    '-O',
    'raw',
    expected,
  ]);
  return { base, top, expected };
}

/** Whether qemu reads `image` (opened with `opts`) as the same bytes as the raw file `expected`. */
function qemuReadsSame(opts: string, expected: string): boolean {
  const result = runStatus('qemu-img', [
    'compare',
    ...secretObject(PASSPHRASE),
    '--image-opts',
    opts,
    `driver=raw,file.filename=${expected}`,
  ]);
  return result.status === 0;
}

describe.skipIf(!hasQemu)('encrypted qcow2 chains: commit and rebase with --image-opts', () => {
  it('commits an encrypted overlay into its encrypted base, which qemu then reads as the chain read', async () => {
    const { base, top, expected } = makeChain('commit');
    const result = await runVdisk(['commit', ...secretObject(PASSPHRASE), '--image-opts', chainOpts(top)]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('Image committed.\n');
    expect(qemuReadsSame(imageOpts(base, 'qcow2'), expected)).toBe(true);
    // The emptied overlay still reads the same through the (now updated) base.
    expect(qemuReadsSame(chainOpts(top), expected)).toBe(true);
    qemuRun('qemu-img', ['check', ...secretObject(PASSPHRASE), '--image-opts', imageOpts(base, 'qcow2')]);
  });

  it('flattens an encrypted overlay with rebase -b "", which qemu then reads without its base', async () => {
    const { top, expected } = makeChain('rebase');
    const result = await runVdisk([
      'rebase',
      ...secretObject(PASSPHRASE),
      '--image-opts',
      '-b',
      '',
      chainOpts(top),
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', top])) as Record<string, unknown>;
    expect(info['backing-filename']).toBeUndefined();
    expect(qemuReadsSame(imageOpts(top, 'qcow2'), expected)).toBe(true);
    qemuRun('qemu-img', ['check', ...secretObject(PASSPHRASE), '--image-opts', imageOpts(top, 'qcow2')]);
  });

  it('refuses to commit without the key, naming the image, and leaves the base as it was', async () => {
    const { base, top } = makeChain('nokey');
    const before = join(dir, 'nokey-before.raw');
    qemuRun('qemu-img', [
      'convert',
      ...secretObject(PASSPHRASE),
      '--image-opts',
      imageOpts(base, 'qcow2'),
      '-O',
      'raw',
      before,
    ]);
    const result = await runVdisk(['commit', top]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(top);
    expect(qemuReadsSame(imageOpts(base, 'qcow2'), before)).toBe(true);
  });
});
