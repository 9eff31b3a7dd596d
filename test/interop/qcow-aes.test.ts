// Legacy AES encryption (crypt_method 1) read for qcow v1 (issue 4) and qcow2 (issue 3), against
// images qemu-img 7.2 still makes with encrypt.format=aes: byte-exact with qemu's reading, info JSON
// equal to qemu's, writes refused with a clear error, and data refused without a key.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearSecrets, defineSecret } from '../../src/engine/crypto/secrets.ts';
import { openImage } from '../../src/engine/open.ts';
import { haveTools, run, scratchDir, sha256Device, sha256File } from '../helpers/format-harness.ts';
import { imageOpts, qemuRun, secretObject } from '../helpers/qemu-crypto.ts';
import { runVdisk } from '../helpers/run-vdisk.ts';

const hasQemu = haveTools(['qemu-img', 'qemu-io'], 'legacy AES interop tests');
const PASSPHRASE = 'sixteen+ bytes passphrase';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await scratchDir('aes')));
afterAll(async () => {
  clearSecrets();
  await cleanup();
});

for (const format of ['qcow', 'qcow2'] as const) {
  describe.skipIf(!hasQemu)(`${format} with legacy AES made by qemu-img`, () => {
    let path: string;
    beforeAll(() => {
      path = join(dir, `aes.${format}`);
      qemuRun('qemu-img', [
        'create',
        '-q',
        '-f',
        format,
        ...secretObject(PASSPHRASE),
        '-o',
        'encrypt.format=aes,encrypt.key-secret=sec0',
        path,
        '8M',
      ]);
      qemuRun('qemu-io', [
        ...secretObject(PASSPHRASE),
        '--image-opts',
        imageOpts(path, format),
        '-c',
        'write -P 0x61 3000 200000',
        '-c',
        'write -P 0x62 7000000 5000',
      ]);
    });

    it('reads byte-exact as qemu-img convert does', async () => {
      const qemuRaw = join(dir, `aes.${format}.raw`);
      qemuRun('qemu-img', [
        'convert',
        ...secretObject(PASSPHRASE),
        '--image-opts',
        imageOpts(path, format),
        '-O',
        'raw',
        qemuRaw,
      ]);
      defineSecret('sec0', Buffer.from(PASSPHRASE));
      const device = await openImage(path, {
        readOnly: true,
        driverOptions: { 'encrypt.key-secret': 'sec0' },
      });
      try {
        expect(await sha256Device(device)).toBe(await sha256File(qemuRaw));
        const odd = new Uint8Array(10);
        await device.read(2995, odd);
        expect([...odd]).toEqual([0, 0, 0, 0, 0, 0x61, 0x61, 0x61, 0x61, 0x61]);
      } finally {
        await device.close();
      }
    });

    it('prints the same info JSON as qemu-img', async () => {
      const ours = await runVdisk(['info', '--output=json', path]);
      expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', path])));
      expect(JSON.parse(ours.stdout).encrypted).toBe(true);
    });

    it('refuses data without a key and writes with one', async () => {
      await expect(openImage(path, { readOnly: true })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
      const keyless = await openImage(path, { readOnly: true, metadataOnly: true });
      try {
        await expect(keyless.read(0, new Uint8Array(4096))).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
      } finally {
        await keyless.close();
      }
      defineSecret('sec0', Buffer.from(PASSPHRASE));
      const before = await sha256File(path);
      const attempt = async () => {
        const device = await openImage(path, { driverOptions: { 'encrypt.key-secret': 'sec0' } });
        try {
          await device.write(0, new Uint8Array(512));
        } finally {
          await device.close();
        }
      };
      await expect(attempt()).rejects.toMatchObject({ code: 'VDISK_ENOTSUP' });
      expect(await sha256File(path)).toBe(before);
    });
  });
}
