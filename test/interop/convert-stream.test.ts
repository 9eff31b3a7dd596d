// vdisk convert to and from pipes, judged by qemu-img: `convert -O qcow2 in - | cat > out` must give
// an image qemu-img check calls clean and compare calls identical (for every layout option), and
// `cat img | convert -f qcow2 - out` must read qemu-made images byte-exact, including ones whose L1
// table sits after the data (the spill file path) and compressed (zlib, zstd) ones. Bad streams fail
// with a clear error, never a hang.

import { spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertFromStream } from '../../src/engine/commands/convert-stream.ts';
import { ByteSource } from '../../src/engine/io/byte-stream.ts';
import { hasTool, mustRun, scratch, tool, warnMissing } from './cli-helpers.ts';

const HAS_QEMU = hasTool('qemu-img') && hasTool('qemu-io');
const VDISK_BIN = join(import.meta.dirname, '../../bin/vdisk.mjs');
warnMissing('qemu-img', 'convert-stream.test.ts');

/** Runs a shell pipeline in `cwd` with `vdisk` meaning this checkout's CLI (a shell function); returns status and stderr. */
function pipeline(script: string, cwd: string): { code: number; stderr: string } {
  const result = spawnSync(
    'bash',
    ['-c', `set -o pipefail; vdisk() { "$NODE" "$VDISK_BIN" "$@"; }; ${script}`],
    {
      cwd,
      encoding: 'utf8',
      env: { ...process.env, NODE: process.execPath, VDISK_BIN },
      timeout: 120_000,
    },
  );
  return { code: result.status ?? -1, stderr: result.stderr };
}

describe.skipIf(!HAS_QEMU)('vdisk convert through pipes, judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (name: string): string => join(dir, name);
  const identical = (a: string, b: string): void => {
    const result = tool('qemu-img', ['compare', path(a), path(b)]);
    expect(result.stdout).toBe('Images are identical.\n');
    expect(result.code).toBe(0);
  };
  const clean = (name: string): void => {
    const result = tool('qemu-img', ['check', path(name)]);
    expect(result.stdout).toContain('No errors were found on the image.');
    expect(result.code).toBe(0);
  };
  const run = (script: string): void => {
    const result = pipeline(script, dir);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  };

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('convert-stream'));
    // 24 MiB guest: random data, patterned runs, zeros written as data, holes, a tail not cluster aligned.
    mustRun('qemu-img', ['create', '-q', '-f', 'raw', path('src.raw'), '24M']);
    mustRun('dd', [
      'if=/dev/urandom',
      `of=${path('src.raw')}`,
      'bs=1M',
      'count=3',
      'seek=2',
      'conv=notrunc',
      'status=none',
    ]);
    mustRun('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x33 9M 300k',
      '-c',
      'write -P 0 12M 1M',
      '-c',
      'write -P 0x44 23M 4097',
      path('src.raw'),
    ]);
  });

  afterAll(async () => {
    await cleanup?.();
  });

  it('writes a qcow2 to a pipe that qemu-img checks clean and compares identical, zeros left out', () => {
    run('vdisk convert -O qcow2 src.raw - | cat > piped.qcow2');
    clean('piped.qcow2');
    identical('src.raw', 'piped.qcow2');
    const map = JSON.parse(mustRun('qemu-img', ['map', '--output=json', path('piped.qcow2')])) as Array<{
      start: number;
      length: number;
      data: boolean;
    }>;
    const dataAt = (offsetBytes: number): boolean =>
      map.some(
        (extent) => extent.data && extent.start <= offsetBytes && offsetBytes < extent.start + extent.length,
      );
    expect(dataAt(2 * 1024 * 1024)).toBe(true);
    // The zeros written as data into the raw file are not stored; neither are the holes.
    expect(dataAt(12 * 1024 * 1024 + 65536)).toBe(false);
    expect(dataAt(18 * 1024 * 1024)).toBe(false);
  });

  it.each([
    ['cluster_size=4096'],
    ['cluster_size=2M'],
    ['refcount_bits=1,cluster_size=512'],
    ['compat=0.10'],
    ['extended_l2=on'],
    ['lazy_refcounts=on,refcount_bits=64'],
  ])('honours -o %s on a pipe', (options) => {
    run(`vdisk convert -O qcow2 -o ${options} src.raw - | cat > opts.qcow2`);
    clean('opts.qcow2');
    identical('src.raw', 'opts.qcow2');
  });

  it('streams a qcow2 with a backing chain as one flattened image (-S 0 keeps every allocated cluster)', () => {
    mustRun('qemu-img', ['convert', '-O', 'qcow2', path('src.raw'), path('base.qcow2')]);
    mustRun('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      path('top.qcow2'),
    ]);
    mustRun('qemu-io', ['-c', 'write -P 0x77 3M 100k', '-c', 'write -z 9M 64k', path('top.qcow2')]);
    run('vdisk convert -S 0 -O qcow2 top.qcow2 - | cat > flat.qcow2');
    clean('flat.qcow2');
    identical('top.qcow2', 'flat.qcow2');
    expect(JSON.parse(mustRun('qemu-img', ['info', '--output=json', path('flat.qcow2')]))).not.toHaveProperty(
      'backing-filename',
    );
  });

  it('reads qemu-made qcow2 images from a pipe: plain, L1 moved past the data (spilled), compressed, extended L2', async () => {
    mustRun('qemu-img', ['convert', '-O', 'qcow2', path('src.raw'), path('plain.qcow2')]);
    // A 4 KiB-cluster image grown past its L1 table's reach gets a new L1 at the end of the file.
    mustRun('qemu-img', [
      'convert',
      '-O',
      'qcow2',
      '-o',
      'cluster_size=4096',
      path('src.raw'),
      path('moved.qcow2'),
    ]);
    mustRun('qemu-img', ['resize', '-q', path('moved.qcow2'), '2G']);
    mustRun('qemu-io', ['-c', 'write -P 0x55 1500M 1M', path('moved.qcow2')]);
    mustRun('qemu-img', ['convert', '-c', '-O', 'qcow2', path('moved.qcow2'), path('zlib.qcow2')]);
    mustRun('qemu-img', [
      'convert',
      '-c',
      '-O',
      'qcow2',
      '-o',
      'compression_type=zstd',
      path('moved.qcow2'),
      path('zstd.qcow2'),
    ]);
    // Extended L2: subclusters written and zeroed (1M: the zeroed subclusters keep 0x22 in the host
    // cluster, so copying whole clusters would be caught), and a discard.
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', path('ext.qcow2'), '8M']);
    mustRun('qemu-io', [
      '-c',
      'write -P 0x11 4k 8k',
      '-c',
      'write -P 0x22 1M 100k',
      '-c',
      'write -z 1M 8k',
      '-c',
      'write -P 0x33 3M 64k',
      '-c',
      'discard 3M 4k',
      path('ext.qcow2'),
    ]);
    for (const name of ['plain', 'moved', 'zlib', 'zstd', 'ext']) {
      run(`cat ${name}.qcow2 | vdisk convert -f qcow2 - ${name}.raw`);
      identical(`${name}.qcow2`, `${name}.raw`);
    }
    run('cat zlib.qcow2 | vdisk convert -f qcow2 -O qcow2 - zlib-again.qcow2');
    clean('zlib-again.qcow2');
    identical('zlib.qcow2', 'zlib-again.qcow2');
    // The spill file is gone afterwards.
    expect((await readdir(dir)).filter((name) => name.includes('vdisk-spill'))).toEqual([]);
    // Only the image whose L1 moved past its data needed the spill file.
    const spilled = async (name: string): Promise<number> =>
      (
        await convertFromStream({
          input: new ByteSource(createReadStream(path(`${name}.qcow2`)), name),
          sourceFormat: 'qcow2',
          targetPath: path(`${name}-engine.raw`),
        })
      ).spilledBytes;
    expect(await spilled('plain')).toBe(0);
    expect(await spilled('moved')).toBeGreaterThan(0);
  });

  it('pipes vdisk into vdisk, and probes the stream format when -f is absent', () => {
    run('vdisk convert -O qcow2 src.raw - | vdisk convert - round.raw');
    identical('src.raw', 'round.raw');
  });

  it('reads raw from a pipe into qcow2 and raw, sized by the stream (rounded up to 512 bytes)', async () => {
    run('cat src.raw | vdisk convert -f raw -O qcow2 - fromraw.qcow2');
    clean('fromraw.qcow2');
    identical('src.raw', 'fromraw.qcow2');
    run('head -c 70000 src.raw | vdisk convert -f raw - odd.raw');
    expect((await stat(path('odd.raw'))).size).toBe(70144);
    run('head -c 70000 src.raw > odd-src.raw');
    mustRun('truncate', ['-s', '70144', path('odd-src.raw')]);
    identical('odd-src.raw', 'odd.raw');
  });

  it('refuses bad streams with a clear error and exit code 1', async () => {
    mustRun('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      path('withbacking.qcow2'),
    ]);
    await writeFile(path('garbage.bin'), Buffer.from('QFI\xfbnot really a header', 'latin1'));
    const cases: Array<[string, RegExp]> = [
      ['head -c 300000 plain.qcow2 | vdisk convert -f qcow2 - cut.raw', /past the end of the stream/],
      ['cat garbage.bin | vdisk convert -f qcow2 - g.raw', /qcow2 header/],
      ['cat withbacking.qcow2 | vdisk convert -f qcow2 - b.raw', /cannot have a backing file/],
      ['vdisk convert -O vmdk src.raw - > /dev/null', /cannot be written to a stream/],
      ['vdisk convert -O qcow2 -o preallocation=full src.raw - > /dev/null', /preallocation/],
      ['cat src.raw | vdisk convert -f raw -O qcow2 - -', /both input and output/],
    ];
    for (const [script, message] of cases) {
      const result = pipeline(script, dir);
      expect({ script, code: result.code }).toEqual({ script, code: 1 });
      expect(result.stderr).toMatch(message);
      expect(result.stderr).not.toMatch(/internal error|at .*\.ts:\d+/);
    }
  });
});
