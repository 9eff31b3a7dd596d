// What a short `vdisk` run loads: start-up is most of a `check` or `info` (qemu-img's take ~5 ms),
// so modules only some commands need must not be loaded by every one. node:crypto (~9 ms) is for
// new images' random ids, node:zlib (~2-3 ms with the stream modules it pulls in) for compressed
// clusters, node:worker_threads for zstd, koffi and libc (~4 ms) for SEEK_DATA and fallocate; none
// is needed to check or describe an uncompressed qcow2 image. The real entry point runs in a child process, which reports at
// exit the built-in modules and CommonJS files it loaded.

import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImage } from '../../../src/engine/commands/create.ts';

const VDISK = join(import.meta.dirname, '../../../bin/vdisk.mjs');
const MARK = 'LOADED:';
// Runs before the entry point; at exit prints what the process loaded, one JSON line on stderr.
const REPORTER = `data:text/javascript,${encodeURIComponent(`
process.on('exit', () => {
  const builtins = process.moduleLoadList.filter((name) => name.startsWith('NativeModule '));
  const files = Object.keys(process.getBuiltinModule('node:module')._cache);
  process.stderr.write('${MARK}' + JSON.stringify({ builtins, files }) + '\\n');
});`)}`;

let folder: string;
let image: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-startup-'));
  image = join(folder, 'disk.qcow2');
  await createImage({ path: image, format: 'qcow2', sizeBytes: 64 * 1024 * 1024, options: {} });
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

async function loadsOf(args: string[]): Promise<{ builtins: string[]; files: string[]; stdout: string }> {
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [
    '--import',
    REPORTER,
    VDISK,
    ...args,
  ]);
  const line = stderr.split('\n').find((text) => text.startsWith(MARK));
  if (!line) throw new Error(`no load report from vdisk ${args.join(' ')}; stderr: ${stderr}`);
  return { ...(JSON.parse(line.slice(MARK.length)) as { builtins: string[]; files: string[] }), stdout };
}

describe('vdisk start-up', () => {
  it.each([
    ['check', ['check', '-f', 'qcow2']],
    ['info', ['info', '--output=json']],
  ])(
    '%s of a qcow2 image loads none of node:crypto, node:zlib, node:worker_threads, koffi',
    async (_name, args) => {
      const { builtins, files, stdout } = await loadsOf([...args, image]);
      // It did the work (so the lists describe a real run)...
      expect(stdout).toMatch(/No errors were found|"format": "qcow2"/);
      // ...and the reporter sees loads at all (the check below could not pass vacuously).
      expect(builtins).toContain('NativeModule fs');
      expect(builtins.filter((name) => /^NativeModule (crypto|zlib|worker_threads)$/.test(name))).toEqual([]);
      expect(builtins.filter((name) => name.startsWith('NativeModule internal/crypto/'))).toEqual([]);
      expect(files.filter((file) => file.includes('koffi'))).toEqual([]);
    },
  );

  it('a copy from a raw file loads koffi, for SEEK_DATA', async () => {
    const raw = join(folder, 'in.raw');
    await createImage({ path: raw, format: 'raw', sizeBytes: 1024 * 1024, options: {} });
    const { files } = await loadsOf(['convert', '-f', 'raw', '-O', 'qcow2', raw, join(folder, 'out.qcow2')]);
    expect(files.some((file) => file.includes('koffi'))).toBe(process.platform === 'linux');
  });
});
