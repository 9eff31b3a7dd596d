// `vdisk serve -l`: an internal snapshot made by qemu-img, with writes after it, is exported read-only
// by name, by ID and by qemu-nbd's snapshot.id=/snapshot.name= form; what nbdcopy and qemu-img read
// equals `qemu-img convert -l` of the same snapshot, the map equals qemu-nbd -l's, writes are refused
// with EPERM and leave the image unchanged, and an unknown snapshot is a clear error. Issue 5.

import { spawn } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  missingTools,
  runOk,
  type ServerProcess,
  stopServersAndRemove,
  startQemuNbd,
  startVdiskServe,
  VDISK_BIN,
} from './serve-helpers.ts';
import { libnbdPython, runNbdPython } from '../unit/nbd/tools.ts';

const tools = ['qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo', 'nbdcopy'];
const missing = missingTools(tools, 'serve-qcow2-snapshot interop', 'qemu-utils libnbd-bin');
if (!libnbdPython)
  console.warn(
    'SKIPPED serve-qcow2-snapshot interop: python3-libnbd is missing (apt-get install python3-libnbd)',
  );

/** Runs `vdisk serve` expecting it to fail before listening; resolves with its exit code and stderr. */
function serveFails(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [VDISK_BIN, 'serve', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    }),
  );
}

describe.skipIf(missing.length > 0 || !libnbdPython)('vdisk serve -l: qcow2 internal snapshots', () => {
  let folder: string;
  let image: string;
  /** `qemu-img convert -l` of each snapshot, and of the active layer. */
  const expected = new Map<string, Buffer>();
  const servers: ServerProcess[] = [];

  async function convertSnapshot(spec: string | undefined, label: string): Promise<Buffer> {
    const out = join(folder, `expected-${label}.raw`);
    const snapshot = spec === undefined ? [] : ['-l', spec];
    await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', ...snapshot, image, out]);
    return readFile(out);
  }

  async function readThroughNbd(uri: string, label: string): Promise<Buffer> {
    const out = join(folder, `served-${label}.raw`);
    await runOk('nbdcopy', [uri, out]);
    return readFile(out);
  }

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), 'vdisk-serve-snapshot-'));
    image = join(folder, 'disk.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x12 9M 64k', image]);
    await runOk('qemu-img', ['snapshot', '-c', 'first', image]);
    // After the first snapshot: overwrite part of it, zero some, add new data.
    await runOk('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x21 1M 1M',
      '-c',
      'write -z 9M 64k',
      '-c',
      'write -P 0x22 12M 512k',
      image,
    ]);
    await runOk('qemu-img', ['snapshot', '-c', 'second', image]);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 0 4M', '-c', 'discard 12M 512k', image]);
    const listed = await runOk('qemu-img', ['snapshot', '-l', image]);
    expect(listed).toMatch(/\n1 +first /);
    expect(listed).toMatch(/\n2 +second /);
    expected.set('first', await convertSnapshot('snapshot.name=first', 'first'));
    expected.set('second', await convertSnapshot('snapshot.id=2', 'second'));
    expected.set('active', await convertSnapshot(undefined, 'active'));
    // The three states differ, so serving the wrong one cannot pass.
    expect(expected.get('first')!.equals(expected.get('second')!)).toBe(false);
    expect(expected.get('second')!.equals(expected.get('active')!)).toBe(false);
  });

  afterAll(async () => {
    await stopServersAndRemove(servers, folder);
  });

  it('serves a snapshot by name with the bytes and map qemu-img and qemu-nbd -l give', async () => {
    const vdisk = await startVdiskServe([
      '-t',
      '-f',
      'qcow2',
      '-l',
      'first',
      '-k',
      join(folder, 'a.sock'),
      image,
    ]);
    servers.push(vdisk);
    expect((await readThroughNbd(vdisk.uri, 'first')).equals(expected.get('first')!)).toBe(true);
    const qemu = await startQemuNbd(join(folder, 'qa.sock'), ['-t', '-f', 'qcow2', '-l', 'first', image]);
    servers.push(qemu);
    expect(await runOk('nbdinfo', ['--map', vdisk.uri])).toBe(await runOk('nbdinfo', ['--map', qemu.uri]));
    expect(await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', vdisk.uri, qemu.uri])).toContain(
      'identical',
    );
    await vdisk.stop();
    await qemu.stop();
  });

  it('serves a snapshot by ID, and by snapshot.id= / snapshot.name= as qemu-nbd spells them', async () => {
    for (const [spec, state] of [
      ['2', 'second'],
      ['1', 'first'],
      ['snapshot.id=2', 'second'],
      ['snapshot.name=first', 'first'],
      ['snapshot.id=2,snapshot.name=second', 'second'],
    ] as const) {
      const socket = join(folder, `id-${servers.length}.sock`);
      const vdisk = await startVdiskServe(['-t', '-f', 'qcow2', '-l', spec, '-k', socket, image]);
      servers.push(vdisk);
      const served = await readThroughNbd(vdisk.uri, `spec-${servers.length}`);
      expect(served.equals(expected.get(state)!), spec).toBe(true);
      await vdisk.stop();
    }
  });

  it('exports a snapshot read-only: writes get EPERM and the image is unchanged', async () => {
    // No -r: -l alone must make the export read-only, as qemu-nbd's does.
    const vdisk = await startVdiskServe([
      '-t',
      '-f',
      'qcow2',
      '-l',
      'second',
      '-k',
      join(folder, 'ro.sock'),
      image,
    ]);
    servers.push(vdisk);
    expect(await runOk('nbdinfo', ['--json', vdisk.uri])).toMatch(/"is_read_only": true/);
    const attempt = await runNbdPython(
      [
        'import errno, sys, nbd',
        'h = nbd.NBD()',
        // Without strict mode libnbd sends the write instead of refusing it itself: the server must.
        'h.set_strict_mode(0)',
        'h.connect_uri(sys.argv[1])',
        'assert h.is_read_only()',
        'try:',
        '    h.pwrite(b"\\xee" * 65536, 0)',
        '    print("written")',
        'except nbd.Error as e:',
        '    print("refused", e.errnum == errno.EPERM)',
      ].join('\n'),
      vdisk.uri,
    );
    expect(attempt.stderr).toBe('');
    expect(attempt.stdout.trim()).toBe('refused True');
    // qemu-io opening the export read-write is refused outright.
    const qemuIo = await new Promise<number | null>((resolve) => {
      const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0xee 0 64k', vdisk.uri], {
        stdio: 'ignore',
      });
      child.once('exit', resolve);
    });
    expect(qemuIo).not.toBe(0);
    await vdisk.stop();
    expect((await convertSnapshot('second', 'second-after')).equals(expected.get('second')!)).toBe(true);
    expect((await convertSnapshot(undefined, 'active-after')).equals(expected.get('active')!)).toBe(true);
    expect(await runOk('qemu-img', ['check', '-f', 'qcow2', image])).toMatch(/No errors were found/);
  });

  it('refuses an unknown snapshot, a malformed -l and an image without snapshots with a clear error', async () => {
    const unknown = await serveFails(['-f', 'qcow2', '-l', 'nope', '-k', join(folder, 'x.sock'), image]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/nope/);
    const noSuchId = await serveFails([
      '-f',
      'qcow2',
      '-l',
      'snapshot.id=7',
      '-k',
      join(folder, 'y.sock'),
      image,
    ]);
    expect(noSuchId.code).toBe(1);
    expect(noSuchId.stderr).toMatch(/snapshot\.id=7/);
    const mismatch = await serveFails([
      '-f',
      'qcow2',
      '-l',
      'snapshot.id=1,snapshot.name=second',
      '-k',
      join(folder, 'z.sock'),
      image,
    ]);
    expect(mismatch.code).toBe(1);
    const malformed = await serveFails([
      '-f',
      'qcow2',
      '-l',
      'snapshot.tag=x',
      '-k',
      join(folder, 'w.sock'),
      image,
    ]);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toMatch(/snapshot\.tag=x/);
    const raw = join(folder, 'plain.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', raw, '1M']);
    const noSnapshots = await serveFails(['-f', 'raw', '-l', 'first', '-k', join(folder, 'v.sock'), raw]);
    expect(noSnapshots.code).toBe(1);
    expect(noSnapshots.stderr).toMatch(/plain\.raw/);
  });
});
