// The imager end to end on a temp folder standing in for the PVC (VDISK_PATH_MAP), with a real
// 127.0.0.1 HTTP server and qemu-img as the oracle for the images it makes.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imagerArgs, type ImagerRequest, parseImagerResult } from '../../../../src/api/imager.ts';
import { main } from '../../../../src/agent/imager/main.ts';
import { has } from '../../../helpers/format-harness.ts';

const hasQemuImg = has('qemu-img');
if (!hasQemuImg)
  console.warn('SKIP imager tests: qemu-img (Debian qemu-utils) is not installed; it is the oracle');

const MIB = 1024 * 1024;

describe.skipIf(!hasQemuImg)('imager', () => {
  let root: string;
  let server: Server;
  let baseUrl: string;
  const files = new Map<string, Buffer>();
  const savedMap = process.env.VDISK_PATH_MAP;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'vdisk-imager-'));
    server = createServer((request, response) => {
      const body = files.get(request.url ?? '');
      if (!body) {
        response.writeHead(404).end('not found');
        return;
      }
      response.writeHead(200, { 'content-length': body.length });
      response.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.close();
    await rm(root, { recursive: true, force: true });
    if (savedMap === undefined) delete process.env.VDISK_PATH_MAP;
    else process.env.VDISK_PATH_MAP = savedMap;
  });

  /** A fresh "PVC" folder (and source folder); runs the imager; returns exit code, result, folders. */
  async function run(
    request: ImagerRequest,
    setup?: (folders: { data: string; source: string }) => Promise<void>,
  ) {
    const folder = await mkdtemp(join(root, 'pvc-'));
    const data = join(folder, 'data');
    const source = join(folder, 'source');
    execFileSync('mkdir', ['-p', data, source]);
    await setup?.({ data, source });
    const termination = join(folder, 'termination-log');
    process.env.VDISK_PATH_MAP = JSON.stringify({
      '/data': data,
      '/source': source,
      '/dev/termination-log': termination,
    });
    const code = await main(imagerArgs(request));
    const result = parseImagerResult(await readFile(termination, 'utf8'));
    return { code, result, data, source };
  }

  function qemuInfo(path: string): { 'virtual-size': number; format: string } {
    return JSON.parse(execFileSync('qemu-img', ['info', '--output=json', path], { encoding: 'utf8' }));
  }

  function pattern(sizeBytes: number): Buffer {
    const buffer = Buffer.alloc(sizeBytes);
    for (let offset = 0; offset < sizeBytes; offset += 4096) buffer.writeUInt32LE(offset / 4096 + 1, offset);
    if (sizeBytes >= 2 * MIB) buffer.fill(0, MIB, 2 * MIB);
    return buffer;
  }

  it('creates a blank qcow2 image that qemu-img checks clean, and reports it', async () => {
    const { code, result, data } = await run({
      operation: 'create',
      image: '/data/disk.qcow2',
      format: 'qcow2',
      sizeBytes: 64 * MIB,
    });
    expect(code).toBe(0);
    expect(result).toMatchObject({
      ok: true,
      image: { path: 'disk.qcow2', format: 'qcow2', virtualSize: 64 * MIB },
    });
    expect(qemuInfo(join(data, 'disk.qcow2'))).toMatchObject({ format: 'qcow2', 'virtual-size': 64 * MIB });
    execFileSync('qemu-img', ['check', join(data, 'disk.qcow2')]);
  });

  it('is idempotent: a second create reports the existing image and keeps its content', async () => {
    const first = await run(
      { operation: 'create', image: '/data/disk.img', format: 'raw', sizeBytes: 8 * MIB },
      async ({ data }) => {
        await writeFile(join(data, 'disk.img'), Buffer.alloc(4 * MIB, 7));
      },
    );
    expect(first.code).toBe(0);
    expect(first.result).toMatchObject({ ok: true, image: { virtualSize: 4 * MIB } });
    expect((await readFile(join(first.data, 'disk.img')))[0]).toBe(7);
  });

  it('imports a raw image over http into qcow2, verifying its sha256, byte-exact per qemu-img compare', async () => {
    const body = pattern(3 * MIB + 512);
    files.set('/plain.img', body);
    const sha256 = createHash('sha256').update(body).digest('hex');
    const { code, result, data } = await run({
      operation: 'import',
      image: '/data/disk.qcow2',
      format: 'qcow2',
      sizeBytes: 8 * MIB,
      url: `${baseUrl}/plain.img`,
      sha256,
    });
    expect(code).toBe(0);
    expect(result).toMatchObject({ ok: true, image: { virtualSize: 8 * MIB, sha256 } });
    const reference = join(data, 'reference.img');
    await writeFile(reference, Buffer.concat([body, Buffer.alloc(8 * MIB - body.length)]));
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', reference, join(data, 'disk.qcow2')]);
  });

  it('gunzips a .gz source while streaming; the checksum is of the downloaded bytes', async () => {
    const body = pattern(2 * MIB);
    const gz = gzipSync(body);
    files.set('/disk.img.gz', gz);
    const sha256 = createHash('sha256').update(gz).digest('hex');
    const { code, data } = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: 2 * MIB,
      url: `${baseUrl}/disk.img.gz`,
      sha256,
    });
    expect(code).toBe(0);
    expect((await readFile(join(data, 'disk.img'))).equals(body)).toBe(true);
  });

  it.each([
    ['xz', '/disk.img.xz', (input: Buffer) => execFileSync('xz', ['-c', '-T1'], { input })],
    ['zstd', '/disk.img.zst', (input: Buffer) => zstdCompressSync(input)],
  ])('decompresses a %s source while streaming, by its magic bytes', async (_codec, path, compress) => {
    const body = pattern(3 * MIB);
    files.set(path, compress(body));
    const { code, data } = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: 3 * MIB,
      url: `${baseUrl}${path}`,
    });
    expect(code).toBe(0);
    expect((await readFile(join(data, 'disk.img'))).equals(body)).toBe(true);
  });

  it('fails a corrupt xz source permanently, naming the codec', async () => {
    const xz = execFileSync('xz', ['-c'], { input: pattern(MIB) });
    xz.fill(0x55, 64, 256);
    files.set('/broken.img.xz', xz);
    const { code, result } = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: MIB,
      url: `${baseUrl}/broken.img.xz`,
    });
    expect(code).toBe(2);
    expect(result).toMatchObject({ ok: false, code: 'VDISK_EINVAL' });
    expect((result as { message: string }).message).toMatch(/not a valid xz stream/);
  });

  it('imports a qcow2 source made by qemu-img, converting it to raw', async () => {
    const folder = await mkdtemp(join(root, 'src-'));
    const raw = join(folder, 'src.img');
    await writeFile(raw, pattern(4 * MIB));
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(folder, 'src.qcow2')]);
    files.set('/src.qcow2', await readFile(join(folder, 'src.qcow2')));
    const { code, result, data } = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: 4 * MIB,
      url: `${baseUrl}/src.qcow2`,
    });
    expect(result).toMatchObject({ ok: true });
    expect(code).toBe(0);
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, join(data, 'disk.img')]);
    expect((await readdir(data)).filter((name) => name.startsWith('.'))).toEqual([]);
  });

  it('fails a checksum mismatch permanently (exit 2) with both sums, leaving no image', async () => {
    files.set('/bad.img', pattern(MIB));
    const expected = 'a'.repeat(64);
    const actual = createHash('sha256').update(files.get('/bad.img')!).digest('hex');
    const { code, result, data } = await run({
      operation: 'import',
      image: '/data/disk.qcow2',
      format: 'qcow2',
      sizeBytes: 2 * MIB,
      url: `${baseUrl}/bad.img`,
      sha256: expected,
    });
    expect(code).toBe(2);
    expect(result).toMatchObject({
      ok: false,
      code: 'VDISK_ECHECKSUM',
      expectedSha256: expected,
      actualSha256: actual,
    });
    expect(await readdir(data)).toEqual([]);
  });

  it('fails a 404 permanently and an image larger than the disk size with VDISK_EINVAL', async () => {
    const missing = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: MIB,
      url: `${baseUrl}/missing.img`,
    });
    expect(missing.code).toBe(2);
    expect(missing.result).toMatchObject({ ok: false, code: 'VDISK_EINVAL' });
    files.set('/big.img', pattern(3 * MIB));
    const big = await run({
      operation: 'import',
      image: '/data/disk.img',
      format: 'raw',
      sizeBytes: 2 * MIB,
      url: `${baseUrl}/big.img`,
    });
    expect(big.result).toMatchObject({ ok: false, code: 'VDISK_EINVAL' });
    expect(await readdir(big.data)).toEqual([]);
  });

  it('clones a source image into another format, byte-exact per qemu-img compare', async () => {
    const body = pattern(4 * MIB);
    const { code, result, data, source } = await run(
      {
        operation: 'clone',
        image: '/data/disk.qcow2',
        format: 'qcow2',
        sizeBytes: 4 * MIB,
        source: '/source/disk.img',
      },
      async ({ source: folder }) => writeFile(join(folder, 'disk.img'), body),
    );
    expect(code).toBe(0);
    expect(result).toMatchObject({ ok: true, image: { virtualSize: 4 * MIB, format: 'qcow2' } });
    execFileSync('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'qcow2',
      join(source, 'disk.img'),
      join(data, 'disk.qcow2'),
    ]);
  });

  it('grows a clone to the requested size, and resize grows an existing image', async () => {
    const body = pattern(4 * MIB);
    const cloned = await run(
      {
        operation: 'clone',
        image: '/data/disk.img',
        format: 'raw',
        sizeBytes: 6 * MIB,
        source: '/source/disk.qcow2',
      },
      async ({ source: folder }) => {
        await writeFile(join(folder, 'disk.img'), body);
        execFileSync('qemu-img', [
          'convert',
          '-f',
          'raw',
          '-O',
          'qcow2',
          join(folder, 'disk.img'),
          join(folder, 'disk.qcow2'),
        ]);
      },
    );
    expect(cloned.code).toBe(0);
    expect(qemuInfo(join(cloned.data, 'disk.img'))['virtual-size']).toBe(6 * MIB);
    const grown = await run(
      { operation: 'resize', image: '/data/disk.img', format: 'raw', sizeBytes: 8 * MIB },
      async ({ data }) => {
        await writeFile(join(data, 'disk.img'), body);
      },
    );
    expect(grown.result).toMatchObject({ ok: true, image: { virtualSize: 8 * MIB } });
    expect((await readFile(join(grown.data, 'disk.img'))).subarray(0, 4 * MIB).equals(body)).toBe(true);
  });

  it('refuses to clone a source larger than the disk size, leaving no image', async () => {
    const { code, result, data } = await run(
      {
        operation: 'clone',
        image: '/data/disk.img',
        format: 'raw',
        sizeBytes: 2 * MIB,
        source: '/source/disk.img',
      },
      async ({ source: folder }) => writeFile(join(folder, 'disk.img'), pattern(4 * MIB)),
    );
    expect(code).toBe(2);
    expect(result).toMatchObject({ ok: false, code: 'VDISK_EINVAL' });
    expect(await readdir(data)).toEqual([]);
  });

  it('rejects bad argv with VDISK_EINVAL and exit 2', async () => {
    const folder = await mkdtemp(join(root, 'argv-'));
    process.env.VDISK_PATH_MAP = JSON.stringify({ '/dev/termination-log': join(folder, 'termination-log') });
    expect(await main(['create', '--image=/data/x', '--size=ten'])).toBe(2);
    expect(parseImagerResult(await readFile(join(folder, 'termination-log'), 'utf8'))).toMatchObject({
      ok: false,
      code: 'VDISK_EINVAL',
    });
  });
});
