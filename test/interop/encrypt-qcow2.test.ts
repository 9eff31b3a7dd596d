// qcow2 with encrypt.format=luks against qemu-img 7.2 both ways (issue 3): qemu-made images read
// byte-exact by vdisk, vdisk-made ones read by qemu and `qemu-img check` clean, vdisk writes into a
// qemu-made image that qemu then reads, info JSON equal to qemu's, a wrong passphrase refused with
// nothing written, and hostile LUKS header fields refused quickly.

import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearSecrets, defineSecret } from '../../src/engine/crypto/secrets.ts';
import { openImage } from '../../src/engine/open.ts';
import {
  copyRawInto,
  haveTools,
  run,
  runStatus,
  scratchDir,
  sha256Device,
  sha256File,
  writeSeededRaw,
} from '../helpers/format-harness.ts';
import { imageOpts, qemuRun, secretObject } from '../helpers/qemu-crypto.ts';
import { runVdisk } from '../helpers/run-vdisk.ts';
import { runOk, startVdiskServe } from './serve-helpers.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'qcow2 encryption interop tests');
const PASSPHRASE = 'correct horse';
const SIZE_BYTES = 6 * 1024 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let raw: string;
beforeAll(async () => {
  ({ dir, cleanup } = await scratchDir('crypt'));
  raw = await writeSeededRaw(dir, 'seed.raw', SIZE_BYTES, 5);
});
afterAll(async () => {
  clearSecrets();
  await cleanup();
});

/** A qemu-made encrypted qcow2 holding seed.raw (plus qemu-io writes at odd offsets). */
function qemuImage(name: string, extra: string[] = []): string {
  const path = join(dir, name);
  qemuRun('qemu-img', [
    'convert',
    ...secretObject(PASSPHRASE),
    '-O',
    'qcow2',
    '-o',
    ['encrypt.format=luks', 'encrypt.key-secret=sec0', 'encrypt.iter-time=10', ...extra].join(','),
    raw,
    path,
  ]);
  qemuRun('qemu-io', [
    ...secretObject(PASSPHRASE),
    '--image-opts',
    imageOpts(path, 'qcow2'),
    '-c',
    'write -P 0x5a 70000 3000',
    '-c',
    'write -P 0xa5 5000000 1024',
  ]);
  return path;
}

function qemuRaw(path: string, format: 'qcow2' | 'luks' = 'qcow2', passphrase = PASSPHRASE): string {
  const out = `${path}.qemu.raw`;
  qemuRun('qemu-img', [
    'convert',
    ...secretObject(passphrase),
    '--image-opts',
    imageOpts(path, format),
    '-O',
    'raw',
    out,
  ]);
  return out;
}

async function openWithKey(path: string, readOnly: boolean, passphrase = PASSPHRASE) {
  defineSecret('sec0', Buffer.from(passphrase));
  return openImage(path, { readOnly, driverOptions: { 'encrypt.key-secret': 'sec0' } });
}

describe.skipIf(!hasQemu)('qcow2 encrypt.format=luks made by qemu-img', () => {
  for (const [name, extra] of [
    ['aes-256-xts-plain64 (qemu default)', []],
    [
      'aes-128-cbc-essiv, 4 KiB clusters',
      [
        'encrypt.cipher-alg=aes-128',
        'encrypt.cipher-mode=cbc',
        'encrypt.ivgen-alg=essiv',
        'cluster_size=4096',
      ],
    ],
  ] as const) {
    it(`reads ${name} byte-exact`, async () => {
      const path = qemuImage(`q-${name.split(' ')[0]?.replace(/\W/g, '')}.qcow2`, [...extra]);
      const device = await openWithKey(path, true);
      try {
        expect(await sha256Device(device)).toBe(await sha256File(qemuRaw(path)));
        const odd = new Uint8Array(777);
        await device.read(69_999, odd);
        expect(odd[0]).not.toBe(0x5a);
        expect(odd.subarray(1, 777).every((byte) => byte === 0x5a)).toBe(true);
      } finally {
        await device.close();
      }
    });
  }

  it('prints the same info JSON as qemu-img (encrypted, format-specific encrypt block)', async () => {
    const path = qemuImage('info.qcow2');
    const ours = await runVdisk(['info', '--output=json', path]);
    expect(ours.code).toBe(0);
    expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', path])));
    expect(JSON.parse(ours.stdout).encrypted).toBe(true);
    // Enciphered clusters have no plain host offset: map shows none, as qemu-img's does.
    const mapArgs = [
      'map',
      '--output=json',
      ...secretObject(PASSPHRASE),
      '--image-opts',
      imageOpts(path, 'qcow2'),
    ];
    expect((await runVdisk(mapArgs)).stdout).toBe(run('qemu-img', mapArgs));
    // With --image-opts qemu names the image json:{...}; the human dump too.
    for (const output of ['--output=json', '--output=human']) {
      const args = ['info', output, ...secretObject(PASSPHRASE), '--image-opts', imageOpts(path, 'qcow2')];
      expect((await runVdisk(args)).stdout).toBe(run('qemu-img', args));
    }
  });

  it('takes writes at odd offsets that qemu reads back, and qemu-img check stays clean', async () => {
    const path = qemuImage('written.qcow2');
    const expected = await readFile(qemuRaw(path));
    const patch = Buffer.alloc(200_001, 0x77);
    const device = await openWithKey(path, false);
    try {
      await device.write(1_234_567, patch);
      await device.writeZeroes(4_000_100, 70_000);
    } finally {
      await device.close();
    }
    patch.copy(expected, 1_234_567);
    expected.fill(0, 4_000_100, 4_070_100);
    expect(await readFile(qemuRaw(path))).toEqual(expected);
    qemuRun('qemu-img', ['check', ...secretObject(PASSPHRASE), '--image-opts', imageOpts(path, 'qcow2')]);
  });

  it("refuses a wrong passphrase with qemu's message and writes nothing", async () => {
    const path = qemuImage('wrong.qcow2');
    const before = await sha256File(path);
    await expect(openWithKey(path, false, 'not it')).rejects.toMatchObject({ code: 'VDISK_EPERM' });
    const cli = await runVdisk([
      'convert',
      ...secretObject('not it'),
      '--image-opts',
      imageOpts(path, 'qcow2'),
      '-O',
      'raw',
      join(dir, 'never.raw'),
    ]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('Invalid password, cannot unlock any keyslot');
    expect(await sha256File(path)).toBe(before);
  });

  it('opens for info without a key (as qemu-img info), refuses other opens and data without one', async () => {
    const path = qemuImage('nokey.qcow2');
    const target = join(dir, 'nokey.raw');
    const cli = await runVdisk(['convert', '-O', 'raw', path, target]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain("Parameter 'encrypt.key-secret' is required for cipher");
    expect(existsSync(target)).toBe(false);
    await expect(openImage(path, { readOnly: true })).rejects.toMatchObject({
      code: 'VDISK_EINVAL',
      option: 'encrypt.key-secret',
    });
    const device = await openImage(path, { readOnly: true, metadataOnly: true });
    try {
      expect((await device.info()).encrypted).toBe(true);
      await expect(device.read(0, new Uint8Array(512))).rejects.toMatchObject({
        code: 'VDISK_EINVAL',
        option: 'encrypt.key-secret',
      });
    } finally {
      await device.close();
    }
  });
});

describe.skipIf(!hasQemu)('qcow2 encrypt.format=luks made by vdisk', () => {
  it('converts a raw image that qemu reads byte-exact, with a clean qemu-img check', async () => {
    const path = join(dir, 'v.qcow2');
    const created = await runVdisk([
      'convert',
      ...secretObject(PASSPHRASE),
      '-O',
      'qcow2',
      '-o',
      'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
      raw,
      path,
    ]);
    expect(created).toMatchObject({ code: 0, stderr: '' });
    expect(await sha256File(qemuRaw(path))).toBe(await sha256File(raw));
    qemuRun('qemu-img', ['check', ...secretObject(PASSPHRASE), '--image-opts', imageOpts(path, 'qcow2')]);
    const ours = await runVdisk(['info', '--output=json', path]);
    expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', path])));
    const check = await runVdisk(['check', path]);
    expect(check.code).toBe(0);
    const checkArgs = [
      'check',
      '--output=json',
      ...secretObject(PASSPHRASE),
      '--image-opts',
      imageOpts(path, 'qcow2'),
    ];
    expect((await runVdisk(checkArgs)).stdout).toBe(run('qemu-img', checkArgs));
  });

  it('creates an empty image with the secret from a file, which qemu-io writes and vdisk reads', async () => {
    const keyFile = join(dir, 'key.txt');
    await writeFile(keyFile, PASSPHRASE);
    const path = join(dir, 'created.qcow2');
    const created = await runVdisk([
      'create',
      '-f',
      'qcow2',
      '--object',
      `secret,id=sec1,file=${keyFile}`,
      '-o',
      'encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv',
      path,
      '8M',
    ]);
    expect(created.code).toBe(0);
    qemuRun('qemu-io', [
      ...secretObject(PASSPHRASE),
      '--image-opts',
      imageOpts(path, 'qcow2'),
      '-c',
      'write -P 0x3c 12345 67890',
    ]);
    const device = await openWithKey(path, true);
    try {
      const got = new Uint8Array(67_890 + 2);
      await device.read(12_344, got);
      expect(got[0]).toBe(0);
      expect(got[got.length - 1]).toBe(0);
      expect(got.subarray(1, 67_891).every((byte) => byte === 0x3c)).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('refuses compressed output to an encrypted image, as qemu-img does', async () => {
    const result = await runVdisk([
      'convert',
      '-c',
      ...secretObject(PASSPHRASE),
      '-O',
      'qcow2',
      '-o',
      'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
      raw,
      join(dir, 'compressed.qcow2'),
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('Compression and encryption not supported at the same time');
    expect(existsSync(join(dir, 'compressed.qcow2'))).toBe(false);
    expect(
      runStatus('qemu-img', [
        'convert',
        '-c',
        ...secretObject(PASSPHRASE),
        '-O',
        'qcow2',
        '-o',
        'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
        raw,
        join(dir, 'qc.qcow2'),
      ]).status,
    ).toBe(1);
  });
});

describe.skipIf(!hasQemu)('qcow2 LUKS headers with hostile fields', () => {
  /** Offset of the LUKS header inside the qcow2 file (the crypto header extension's first field). */
  async function luksOffset(path: string): Promise<number> {
    const head = await readFile(path);
    for (let at = 112; at + 8 <= 4096; ) {
      const type = head.readUInt32BE(at);
      const length = head.readUInt32BE(at + 4);
      if (type === 0x0537be77) return Number(head.readBigUInt64BE(at + 8));
      if (type === 0) break;
      at += 8 + Math.ceil(length / 8) * 8;
    }
    throw new Error('no crypto header extension');
  }

  for (const [field, offsetInHeader, value] of [
    ['master key digest iterations 2^32-1', 164, 0xffffffff],
    ['keyslot 0 iterations 2^32-1', 208 + 4, 0xffffffff],
    ['key size 4096 bytes', 108, 4096],
    ['keyslot 0 with 40000 stripes', 208 + 44, 40_000],
    ['keyslot 0 key material past the payload', 208 + 40, 0x7fffffff],
  ] as const) {
    it(`refuses ${field} with VDISK_EFORMAT at the field's offset, quickly`, async () => {
      const path = qemuImage(`bad-${offsetInHeader}.qcow2`);
      const base = await luksOffset(path);
      const bytes = await readFile(path);
      bytes.writeUInt32BE(value, base + offsetInHeader);
      await writeFile(path, bytes);
      const started = Date.now();
      const error = await openWithKey(path, true).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: base + offsetInHeader });
      // Not a timing assertion on vdisk's speed: a bound that only an uncapped PBKDF2 would break.
      expect(Date.now() - started).toBeLessThan(60_000);
    });
  }

  it('copies copyRawInto-style writes into a vdisk-made image byte-exact', async () => {
    const path = join(dir, 'copy.qcow2');
    expect(
      (
        await runVdisk([
          'create',
          '-f',
          'qcow2',
          ...secretObject(PASSPHRASE),
          '-o',
          'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
          path,
          String(SIZE_BYTES),
        ])
      ).code,
    ).toBe(0);
    const device = await openWithKey(path, false);
    try {
      await copyRawInto(raw, device);
    } finally {
      await device.close();
    }
    expect(await sha256File(qemuRaw(path))).toBe(await sha256File(raw));
  });
});

describe.skipIf(!hasQemu || !haveTools(['nbdcopy'], 'encrypted serve test', 'libnbd-bin'))(
  'vdisk serve --image-opts',
  () => {
    it('serves the plaintext of a qemu-made encrypted image to nbdcopy, writes included', async () => {
      const path = qemuImage('served.qcow2');
      const socket = join(dir, 'served.sock');
      const server = await startVdiskServe([
        ...secretObject(PASSPHRASE),
        '--image-opts',
        imageOpts(path, 'qcow2'),
        '-t',
        '-k',
        socket,
      ]);
      const patch = join(dir, 'patch.raw');
      try {
        await runOk('nbdcopy', [server.uri, join(dir, 'served.raw')]);
        expect(await sha256File(join(dir, 'served.raw'))).toBe(await sha256File(qemuRaw(path)));
        await writeFile(patch, Buffer.alloc(SIZE_BYTES, 0x6b));
        await runOk('nbdcopy', [patch, server.uri]);
      } finally {
        await server.stop();
      }
      expect(await sha256File(qemuRaw(path))).toBe(await sha256File(patch));
    });

    it('serves an encrypted image with -s: writes land in the overlay, the image stays as it was', async () => {
      const path = qemuImage('served-s.qcow2');
      const before = await sha256File(qemuRaw(path));
      const socket = join(dir, 'served-s.sock');
      const server = await startVdiskServe([
        ...secretObject(PASSPHRASE),
        '--image-opts',
        imageOpts(path, 'qcow2'),
        '-s',
        '-t',
        '-k',
        socket,
      ]);
      const patch = join(dir, 'patch-s.raw');
      try {
        await runOk('nbdcopy', [server.uri, join(dir, 'served-s.raw')]);
        expect(await sha256File(join(dir, 'served-s.raw'))).toBe(before);
        await writeFile(patch, Buffer.alloc(SIZE_BYTES, 0x3c));
        await runOk('nbdcopy', [patch, server.uri]);
        await runOk('nbdcopy', [server.uri, join(dir, 'served-s-after.raw')]);
        expect(await sha256File(join(dir, 'served-s-after.raw'))).toBe(await sha256File(patch));
      } finally {
        await server.stop();
      }
      expect(await sha256File(qemuRaw(path))).toBe(before);
    });
  },
);
