// `npm run build` (scripts/build-cli.ts) bundles the CLI into dist/cli; bin/vdisk.mjs runs that bundle
// only while every source file it was built from is unchanged. Checked on a scratch copy of the
// repository (src/, bin/, package.json; node_modules linked): the bundle runs and answers exactly as
// the sources do, and an edited source, a missing list or VDISK_FROM_SOURCE=1 sends it to the sources.

import { execFile } from 'node:child_process';
import {
  appendFileSync,
  cpSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUNDLE_DIR, BUNDLE_INPUTS, buildCli } from '../../../scripts/build-cli.ts';
import { createImage } from '../../../src/engine/commands/create.ts';

const REPO = join(import.meta.dirname, '../../..');
const MARK = 'MODULES:';
// Loaded before the entry point: records every module URL the process loads, printed at exit.
const REPORTER = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module';
const urls = [];
registerHooks({ load(url, context, next) { urls.push(url); return next(url, context); } });
process.on('exit', () => process.stderr.write('${MARK}' + JSON.stringify(urls) + '\\n'));`)}`;

let root: string;
let image: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'vdisk-bundle-'));
  for (const part of ['src', 'bin', 'package.json'])
    cpSync(join(REPO, part), join(root, part), { recursive: true });
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'));
  image = join(root, 'disk.qcow2');
  await createImage({ path: image, format: 'qcow2', sizeBytes: 64 * 1024 * 1024, options: {} });
  await buildCli(root);
}, 60_000);
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** Module files under the scratch root that the run loaded, relative to it. */
  loaded: string[];
}

async function vdisk(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const result = await promisify(execFile)(
    process.execPath,
    ['--import', REPORTER, join(root, 'bin/vdisk.mjs'), ...args],
    { env: { ...process.env, VDISK_FROM_SOURCE: '', ...env } },
  ).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code: number; stdout: string; stderr: string }) => ({
      code: err.code,
      stdout: err.stdout,
      stderr: err.stderr,
    }),
  );
  const line = result.stderr.split('\n').find((text) => text.startsWith(MARK)) ?? `${MARK}[]`;
  const prefix = `file://${root}/`;
  const loaded = (JSON.parse(line.slice(MARK.length)) as string[])
    .filter((url) => url.startsWith(prefix))
    .map((url) => url.slice(prefix.length));
  return { ...result, stderr: result.stderr.replace(/^MODULES:.*\n/m, ''), loaded };
}

const fromSources = (run: Run): boolean => run.loaded.includes('src/cli/main.ts');
const fromBundle = (run: Run): boolean => run.loaded.includes(`${BUNDLE_DIR}/main.mjs`);

describe('the CLI bundle', () => {
  it('runs while its inputs are unchanged, loading no source module, and answers as the sources do', async () => {
    for (const args of [
      ['check', image],
      ['info', '--output=json', image],
      ['check', join(root, 'missing.qcow2')],
    ]) {
      const bundled = await vdisk(args);
      const sources = await vdisk(args, { VDISK_FROM_SOURCE: '1' });
      expect(fromBundle(bundled)).toBe(true);
      expect(bundled.loaded.filter((path) => path.startsWith('src/'))).toEqual([]);
      expect(fromSources(sources)).toBe(true);
      expect(fromBundle(sources)).toBe(false);
      expect({ code: bundled.code, stdout: bundled.stdout, stderr: bundled.stderr }).toEqual({
        code: sources.code,
        stdout: sources.stdout,
        stderr: sources.stderr,
      });
    }
  });

  it('converts to the same bytes as the sources do', async () => {
    const raw = join(root, 'guest.raw');
    const data = Buffer.alloc(4 * 1024 * 1024);
    for (let at = 0; at < data.length; at += 3 * 65536) data.fill(at % 251, at, at + 65536);
    writeFileSync(raw, data);
    const outputs: Buffer[] = [];
    for (const env of [{}, { VDISK_FROM_SOURCE: '1' }] as Record<string, string>[]) {
      const out = join(root, `out-${outputs.length}.qcow2`);
      const run = await vdisk(['convert', '-f', 'raw', '-O', 'qcow2', raw, out], env);
      expect(run.code).toBe(0);
      expect(fromBundle(run)).toBe(Object.keys(env).length === 0);
      outputs.push(readFileSync(out));
    }
    // 21 of the 64 KiB blocks hold data (1.3 MiB), besides the metadata.
    expect(outputs[0]?.length).toBeGreaterThan(1024 * 1024);
    expect(outputs[0]?.equals(outputs[1] ?? Buffer.alloc(0))).toBe(true);
  });

  it('loads only the chunks the command needs', async () => {
    const run = await vdisk(['check', image]);
    expect(run.loaded.some((path) => /\/serve-[^/]+\.mjs$/.test(path))).toBe(false);
    expect(run.loaded.some((path) => /\/check-[^/]+\.mjs$/.test(path))).toBe(true);
  });

  it('gives way to the sources when its list of inputs is missing', async () => {
    const list = join(root, BUNDLE_DIR, BUNDLE_INPUTS);
    cpSync(list, `${list}.kept`);
    rmSync(list);
    try {
      const run = await vdisk(['check', image]);
      expect(fromSources(run)).toBe(true);
      expect(run.code).toBe(0);
    } finally {
      cpSync(`${list}.kept`, list);
    }
    expect(fromBundle(await vdisk(['check', image]))).toBe(true);
  });

  // Last: it edits the scratch sources.
  it('never runs stale: after a source edit the edited sources run', async () => {
    appendFileSync(join(root, 'src/cli/commands/check.ts'), "\nprocess.stderr.write('edited source\\n');\n");
    const run = await vdisk(['check', image]);
    expect(fromBundle(run)).toBe(false);
    expect(fromSources(run)).toBe(true);
    expect(run.stderr).toContain('edited source');
    expect(run.code).toBe(0);
  });
});
