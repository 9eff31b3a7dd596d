// The NBD server driven by libnbd (the library behind nbdsh, nbdinfo and nbdcopy) over a unix socket,
// serving the in-memory device: every command and flag, simple and structured replies, the option
// phase, error replies for bad requests, multi-conn copies. Issue 5.

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type NbdExport, type NbdServerHandle, startNbdServer } from '../../../src/nbd/server.ts';
import { createMemoryDevice, type TestDevice } from './memory-device.ts';
import { hasTool, libnbdPython, run, runNbdPython, warnMissing } from './tools.ts';

const MIB = 1024 * 1024;
const canRun = Boolean(libnbdPython) && hasTool('nbdinfo') && hasTool('nbdcopy');
warnMissing('NBD server tests with libnbd', ['nbdsh', 'nbdinfo', 'nbdcopy']);

describe.skipIf(!canRun)('NBD server with libnbd clients', () => {
  let folder: string;
  let server: NbdServerHandle;
  let main: TestDevice;
  let overlay: TestDevice;
  let discarding: TestDevice;
  let halfCached: TestDevice;
  const uri = (name: string): string => `nbd+unix:///${name}?socket=${join(folder, 'nbd.sock')}`;

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), 'vdisk-nbd-'));
    main = createMemoryDevice(32 * MIB);
    const base = createMemoryDevice(8 * MIB);
    await base.device.write(0, Buffer.alloc(2 * MIB, 0xb0));
    overlay = createMemoryDevice(16 * MIB, { backing: base.device });
    await overlay.device.write(MIB, Buffer.alloc(MIB, 0x0f));
    discarding = createMemoryDevice(8 * MIB);
    await discarding.device.write(0, Buffer.alloc(8 * MIB, 1));
    const readOnly = createMemoryDevice(4 * MIB);
    halfCached = createMemoryDevice(8 * MIB, { cachedReads: 'half' });
    const exports: NbdExport[] = [
      { name: '', description: 'main disk', device: main.device },
      { name: 'overlay', device: overlay.device },
      { name: 'ro', description: 'read-only disk', device: readOnly.device, readOnly: true },
      { name: 'discard', device: discarding.device, discard: true, detectZeroes: 'unmap' },
      { name: 'half-cached', device: halfCached.device },
    ];
    server = await startNbdServer({ exports, socketPath: join(folder, 'nbd.sock') });
  });

  afterAll(async () => {
    await server?.close();
    await rm(folder, { recursive: true, force: true });
  });

  async function python(script: string, name = ''): Promise<string> {
    const result = await runNbdPython(script, uri(name));
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout;
  }

  it('reads back what it wrote, honouring FUA and FLUSH', async () => {
    const flushesBefore = main.memory.stats.flushes;
    await python(`
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated()
assert h.get_size() == 32 * 1024 * 1024
for question in ('can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_df', 'can_cache', 'can_multi_conn'):
    assert getattr(h, question)(), question
assert not h.is_read_only()
pattern = bytes(range(256)) * 256
h.pwrite(pattern, 1 << 20)
h.pwrite(b'x' * 1000, 3, nbd.CMD_FLAG_FUA)
assert h.pread(1000, 3) == b'x' * 1000
assert h.pread(65536, 1 << 20) == pattern
assert h.pread(7, (1 << 20) - 3) == bytes(3) + pattern[:4]
h.flush()
h.cache(65536, 0)
h.shutdown()
`);
    expect(main.memory.stats.flushes).toBeGreaterThan(flushesBefore);
    const check = Buffer.alloc(4);
    await main.device.read(MIB, check);
    expect([...check]).toEqual([0, 1, 2, 3]);
  });

  it('sends OFFSET_HOLE chunks for zero ranges and one chunk with DF', async () => {
    const output = await python(`
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b'\\x07' * 65536, 8 << 20)
chunks = []
def chunk(sub, offset, status, err):
    chunks.append((offset, len(sub), status))
    return 0
data = h.pread_structured(4 << 20, 6 << 20, chunk)
assert data[(2 << 20):(2 << 20) + 65536] == b'\\x07' * 65536
assert data.count(0) == len(data) - 65536
print(sorted(chunks))
statuses = set(status for (_, _, status) in chunks)
assert statuses == {nbd.READ_DATA, nbd.READ_HOLE}, statuses
chunks.clear()
h.pread_structured(4 << 20, 6 << 20, chunk, nbd.CMD_FLAG_DF)
assert len(chunks) == 1 and chunks[0][2] == nbd.READ_DATA, chunks
chunks.clear()
h.pread_structured(1 << 20, 20 << 20, chunk, nbd.CMD_FLAG_DF)
assert chunks == [(20 << 20, 1 << 20, nbd.READ_HOLE)], chunks
h.shutdown()
`);
    expect(output).toContain(String(8 * MIB));
  });

  it('joins a read the page cache holds only the start of with the rest read from the device', async () => {
    // Issue 5: cached reads are answered synchronously; a partly cached one must still be whole.
    await python(
      `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
pattern = bytes((i * 7) % 251 for i in range(3 << 20))
h.pwrite(pattern, 1 << 20)
for (offset, length) in ((1 << 20, 3 << 20), ((1 << 20) + 513, 70000), (0, 2 << 20), ((2 << 20) + 4096, 4096)):
    expected = (bytes(1 << 20) + pattern + bytes(8 << 20))[offset:offset + length]
    assert h.pread(length, offset) == expected, (offset, length)
h.shutdown()
`,
      'half-cached',
    );
    expect(halfCached.memory.stats.cachedReads).toBeGreaterThanOrEqual(4);
    expect(halfCached.memory.stats.reads).toBeGreaterThanOrEqual(4);
  });

  it('writes zeroes with NO_HOLE and FAST_ZERO, refusing a slow fast-zero with ENOTSUP', async () => {
    await python(`
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b'\\xff' * (1 << 20), 2 << 20)
h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, (2 << 20) + 65536, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
try:
    h.zero(100, (2 << 20) + 5, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit('fast zero of an unaligned range should fail')
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, e
assert h.pread(1 << 20, 2 << 20) == b'\\x00' * 131072 + b'\\xff' * ((1 << 20) - 131072)
h.trim(65536, 4 << 20)
assert h.pread(65536, 4 << 20) == bytes(65536)
h.shutdown()
`);
  });

  it('reports base:allocation and qemu:allocation-depth through a backing chain, with REQ_ONE', async () => {
    const output = await python(
      `
import json, nbd, sys
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.add_meta_context('qemu:allocation-depth')
h.connect_uri(sys.argv[1])
assert h.can_meta_context('base:allocation') and h.can_meta_context('qemu:allocation-depth')
seen = {}
def status(context, offset, entries, err):
    seen[context] = entries
    return 0
h.block_status(16 << 20, 0, status)
full = dict(seen)
h.block_status(16 << 20, 0, status, nbd.CMD_FLAG_REQ_ONE)
print(json.dumps({'full': full, 'one': seen}))
h.shutdown()
`,
      'overlay',
    );
    const { full, one } = JSON.parse(output) as {
      full: Record<string, number[]>;
      one: Record<string, number[]>;
    };
    // base 0-2 MiB data (backing), top 1-2 MiB data, rest of the 8 MiB backing and beyond: holes.
    expect(full['base:allocation']).toEqual([2 * MIB, 0, 14 * MIB, 3]);
    // 0-1 MiB from the backing file, 1-2 MiB from the top image, the rest allocated nowhere.
    expect(full['qemu:allocation-depth']).toEqual([MIB, 2, MIB, 1, 14 * MIB, 0]);
    expect(one['base:allocation']).toEqual([2 * MIB, 0]);
    expect(one['qemu:allocation-depth']).toEqual([MIB, 2]);
  });

  it('answers bad requests with the protocol errors and keeps the connection', async () => {
    await python(`
import errno, nbd, sys
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.connect_uri(sys.argv[1])
h.set_strict_mode(0)
size = h.get_size()
def expect_error(call, code):
    try:
        call()
    except nbd.Error as e:
        assert e.errnum == code, (e, code)
        return
    raise SystemExit('expected errno %d' % code)
expect_error(lambda: h.pread(4096, size - 100), errno.EINVAL)
expect_error(lambda: h.pwrite(b'a' * 4096, size - 100), errno.ENOSPC)
expect_error(lambda: h.zero(4096, size), errno.ENOSPC)
expect_error(lambda: h.trim(4096, size), errno.ENOSPC)
expect_error(lambda: h.pread(512, 0, nbd.CMD_FLAG_FUA), errno.EINVAL)
expect_error(lambda: h.flush(nbd.CMD_FLAG_NO_HOLE), errno.EINVAL)
expect_error(lambda: h.pread(0, 0), errno.EINVAL)
expect_error(lambda: h.pread(33 << 20, 0), errno.EOVERFLOW)
expect_error(lambda: h.block_status(4096, size, lambda *a: 0), errno.EINVAL)
expect_error(lambda: h.cache(4096, size), errno.EINVAL)
assert h.pread(512, 0) == h.pread(512, 0)
h.shutdown()
`);
  });

  it('serves simple replies when structured replies are not negotiated (the Linux kernel client)', async () => {
    await python(`
import errno, nbd, sys
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(sys.argv[1])
assert not h.get_structured_replies_negotiated()
assert not h.can_df()
h.pwrite(b'k' * 4096, 12 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 12 << 20) == b'k' * 4096
h.set_strict_mode(0)
try:
    h.pread(4096, (32 << 20) - 1)
    raise SystemExit('read past the end should fail')
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
assert h.pread(4096, 12 << 20) == b'k' * 4096
h.zero(4096, 12 << 20)
h.flush()
assert h.pread(4096, 12 << 20) == bytes(4096)
h.shutdown()
`);
  });

  it('refuses writes on a read-only export with EPERM', async () => {
    await python(
      `
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.is_read_only() and not h.can_trim() and not h.can_zero() and not h.can_fua()
h.set_strict_mode(0)
for call in (lambda: h.pwrite(b'a', 0), lambda: h.trim(512, 0), lambda: h.zero(512, 0)):
    try:
        call()
        raise SystemExit('write on a read-only export should fail')
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, e
h.flush()
h.shutdown()
`,
      'ro',
    );
  });

  it('passes TRIM on with discard and turns zero writes into holes with detect-zeroes=unmap', async () => {
    await python(
      `
import nbd, sys
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.connect_uri(sys.argv[1])
h.trim(2 << 20, 0)
h.pwrite(bytes(1 << 20), 4 << 20)
seen = []
h.block_status(8 << 20, 0, lambda context, offset, entries, err: seen.extend(entries) or 0)
assert seen == [2 << 20, 3, 2 << 20, 0, 1 << 20, 3, 3 << 20, 0], seen
h.shutdown()
`,
      'discard',
    );
    expect(discarding.memory.stats.discards).toBeGreaterThan(0);
  });

  it('negotiates options: LIST, INFO with name and description, unknown export, meta context listing', async () => {
    const output = await python(`
import json, nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(sys.argv[1])
names = []
h.opt_list(lambda name, description: names.append([name, description]) or 0)
contexts = []
h.opt_list_meta_context(lambda name: contexts.append(name) or 0)
h.set_export_name('nope')
try:
    h.opt_info()
    raise SystemExit('unknown export should fail')
except nbd.Error:
    pass
h.set_export_name('ro')
h.opt_info()
info = [h.get_size(), h.is_read_only(), h.get_export_description(), h.get_canonical_export_name(), h.get_block_size(nbd.SIZE_MAXIMUM)]
h.set_export_name('')
h.opt_go()
assert h.get_export_description() == 'main disk'
h.shutdown()
print(json.dumps({'names': names, 'contexts': contexts, 'info': info}))
`);
    const result = JSON.parse(output);
    expect(result.names).toEqual([
      ['', 'main disk'],
      ['overlay', ''],
      ['ro', 'read-only disk'],
      ['discard', ''],
      ['half-cached', ''],
    ]);
    expect(result.contexts).toEqual(['base:allocation', 'qemu:allocation-depth']);
    expect(result.info).toEqual([4 * MIB, true, 'read-only disk', 'ro', 32 * MIB]);
  });

  it('nbdinfo reports the export and its map', async () => {
    const info = await run('nbdinfo', ['--json', uri('overlay')]);
    expect(info.code).toBe(0);
    const parsed = JSON.parse(info.stdout) as { exports: { 'export-size': number; contexts: string[] }[] };
    expect(parsed.exports[0]?.['export-size']).toBe(16 * MIB);
    expect(parsed.exports[0]?.contexts).toEqual(['base:allocation', 'qemu:allocation-depth']);
    const map = await run('nbdinfo', ['--map=qemu:allocation-depth', '--totals', uri('overlay')]);
    expect(map.stdout).toMatch(/0\.0%?\s|absent|local|backing/);
    const list = await run('nbdinfo', ['--list', '--json', uri('')]);
    const listed = JSON.parse(list.stdout) as { exports: { 'export-name': string; description?: string }[] };
    expect(listed.exports.map((entry) => [entry['export-name'], entry.description ?? ''])).toEqual([
      ['', 'main disk'],
      ['overlay', ''],
      ['ro', 'read-only disk'],
      ['discard', ''],
      ['half-cached', ''],
    ]);
    const can = await run('nbdinfo', ['--can', 'multi-conn', uri('')]);
    expect(can.code).toBe(0);
    const isReadOnly = await run('nbdinfo', ['--is', 'readonly', uri('ro')]);
    expect(isReadOnly.code).toBe(0);
  });

  it('copies byte-exact both ways with nbdcopy over 4 connections', async () => {
    const source = join(folder, 'source.bin');
    const back = join(folder, 'back.bin');
    const bytes = Buffer.alloc(32 * MIB);
    for (let at = 0; at < bytes.length; at += 3 * MIB)
      bytes.fill((at / MIB) & 0xff, at, Math.min(at + MIB + 17, bytes.length));
    await writeFile(source, bytes);
    const toServer = await run('nbdcopy', ['--connections=4', source, uri('')]);
    expect(toServer.stderr).toBe('');
    const fromServer = await run('nbdcopy', ['--connections=4', uri(''), back]);
    expect(fromServer.stderr).toBe('');
    expect((await readFile(back)).equals(bytes)).toBe(true);
  });
});
