// LUKS volumes with every cipher qemu-img 7.2 (nettle) offers beyond AES-XTS/CBC/ECB: twofish, serpent
// and cast5 in each mode qemu accepts (xts, cbc, ecb, ctr), plus AES's ctr mode and 192-bit XTS.
// Each cipher x mode runs both ways, alternating the container (-f luks, qcow2 encrypt.format=luks):
// qemu writes a seeded image plus a qemu-io pattern that vdisk must read byte-exact, and vdisk converts
// the seed that `qemu-img compare` must find equal (and `qemu-img check` clean for qcow2). Key sizes and
// ESSIV variants run only the vdisk-writes way: qemu's PBKDF2 calibration costs 1-3 s per volume made.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearSecrets, defineSecret } from '../../src/engine/crypto/secrets.ts';
import { openImage } from '../../src/engine/open.ts';
import { haveTools, run, runStatus, scratchDir, writeSeededRaw } from '../helpers/format-harness.ts';
import { imageOpts, qemuRun, secretObject } from '../helpers/qemu-crypto.ts';
import { runVdisk } from '../helpers/run-vdisk.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'LUKS cipher interop tests');
const PASSPHRASE = 'cipher pass';
const SIZE_BYTES = 1024 * 1024;
type Container = 'luks' | 'qcow2';

interface CipherCase {
  alg: string;
  mode: string;
  ivgen?: string;
  ivgenHash?: string;
  hash?: string;
  /** Only vdisk creates (qemu reads it back), to keep the run near 30 s. */
  vdiskOnly?: boolean;
}

const CASES: CipherCase[] = [
  ...['twofish-256', 'serpent-128'].flatMap((alg) =>
    ['xts', 'cbc', 'ecb', 'ctr'].map((mode) => ({ alg, mode })),
  ),
  ...['cbc', 'ecb', 'ctr'].map((mode) => ({ alg: 'cast5-128', mode })),
  { alg: 'aes-128', mode: 'ctr' },
  { alg: 'twofish-128', mode: 'xts', ivgen: 'essiv', vdiskOnly: true },
  { alg: 'twofish-192', mode: 'xts', ivgen: 'plain', vdiskOnly: true },
  { alg: 'serpent-192', mode: 'xts', vdiskOnly: true },
  { alg: 'serpent-256', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'sha256', vdiskOnly: true },
  { alg: 'cast5-128', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'md5', vdiskOnly: true },
  { alg: 'aes-192', mode: 'xts', vdiskOnly: true },
  { alg: 'aes-192', mode: 'xts', ivgen: 'essiv', ivgenHash: 'sha256', vdiskOnly: true },
  { alg: 'aes-256', mode: 'ecb', hash: 'md5', vdiskOnly: true },
];

let dir: string;
let cleanup: () => Promise<void>;
let raw: string;
beforeAll(async () => {
  ({ dir, cleanup } = await scratchDir('luks-ciphers'));
  raw = await writeSeededRaw(dir, 'seed.raw', SIZE_BYTES, 31);
});
afterAll(async () => {
  clearSecrets();
  await cleanup();
});

/** `-o` options for `testCase` in `container` spelling (qcow2 prefixes "encrypt."). */
function createOptions(testCase: CipherCase, container: Container): string {
  const prefix = container === 'qcow2' ? 'encrypt.' : '';
  const options: Record<string, string | undefined> = {
    'key-secret': 'sec0',
    'iter-time': '10',
    'cipher-alg': testCase.alg,
    'cipher-mode': testCase.mode,
    'ivgen-alg': testCase.ivgen,
    'ivgen-hash-alg': testCase.ivgenHash,
    'hash-alg': testCase.hash,
  };
  const pairs = Object.entries(options)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${prefix}${name}=${value}`);
  return [...(container === 'qcow2' ? ['encrypt.format=luks'] : []), ...pairs].join(',');
}

async function openVolume(path: string, container: Container, passphrase = PASSPHRASE) {
  defineSecret('sec0', Buffer.from(passphrase));
  const key = container === 'luks' ? 'key-secret' : 'encrypt.key-secret';
  return openImage(path, { readOnly: true, driverOptions: { [key]: 'sec0' } });
}

function describeCase(testCase: CipherCase): string {
  return [testCase.alg, testCase.mode, testCase.ivgen, testCase.ivgenHash, testCase.hash]
    .filter(Boolean)
    .join(' ');
}

describe.skipIf(!hasQemu)('LUKS ciphers beyond AES, against qemu-img 7.2', () => {
  CASES.forEach((testCase, index) => {
    const qemuMakes: Container = index % 2 === 0 ? 'luks' : 'qcow2';
    const vdiskMakes: Container = index % 2 === 0 ? 'qcow2' : 'luks';

    if (!testCase.vdiskOnly)
      it(`${describeCase(testCase)}: qemu writes ${qemuMakes}, vdisk reads byte-exact`, async () => {
        const path = join(dir, `q${index}.${qemuMakes}`);
        qemuRun('qemu-img', [
          'convert',
          ...secretObject(PASSPHRASE),
          '-O',
          qemuMakes,
          '-o',
          createOptions(testCase, qemuMakes),
          raw,
          path,
        ]);
        // An unaligned write: qemu re-enciphers the partial sectors around it.
        qemuRun('qemu-io', [
          ...secretObject(PASSPHRASE),
          '--image-opts',
          imageOpts(path, qemuMakes),
          '-c',
          'write -P 0x3c 70001 3000',
        ]);
        // info reads the header only: the cipher fields must print as qemu prints them.
        const info = await runVdisk(['info', '--output=json', path]);
        expect(JSON.parse(info.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', path])));
        const expected = await readFile(raw);
        expected.fill(0x3c, 70001, 73001);
        const device = await openVolume(path, qemuMakes);
        try {
          const got = Buffer.alloc(SIZE_BYTES);
          await device.read(0, got);
          expect(got.equals(expected)).toBe(true);
        } finally {
          await device.close();
        }
      });

    it(`${describeCase(testCase)}: vdisk writes ${vdiskMakes}, qemu-img compare finds the seed`, async () => {
      const path = join(dir, `v${index}.${vdiskMakes}`);
      const created = await runVdisk([
        'convert',
        ...secretObject(PASSPHRASE),
        '-O',
        vdiskMakes,
        '-o',
        createOptions(testCase, vdiskMakes),
        raw,
        path,
      ]);
      expect(created).toMatchObject({ code: 0, stderr: '' });
      const compared = runStatus('qemu-img', [
        'compare',
        ...secretObject(PASSPHRASE),
        '--image-opts',
        `driver=raw,file.filename=${raw}`,
        imageOpts(path, vdiskMakes),
      ]);
      expect(compared.stderr).toBe('');
      expect(compared.status).toBe(0);
      if (vdiskMakes === 'qcow2') {
        const checked = runStatus('qemu-img', [
          'check',
          ...secretObject(PASSPHRASE),
          '--image-opts',
          imageOpts(path, 'qcow2'),
        ]);
        expect(checked.status).toBe(0);
      }
    });
  });

  it('refuses a wrong passphrase on a twofish volume with VDISK_EPERM', async () => {
    const path = join(dir, 'wrong.luks');
    qemuRun('qemu-img', [
      'create',
      '-f',
      'luks',
      ...secretObject(PASSPHRASE),
      '-o',
      createOptions({ alg: 'twofish-256', mode: 'xts' }, 'luks'),
      path,
      '1M',
    ]);
    await expect(openVolume(path, 'luks', 'not the passphrase')).rejects.toMatchObject({
      code: 'VDISK_EPERM',
      message: expect.stringContaining('Invalid password, cannot unlock any keyslot'),
    });
  });
});
