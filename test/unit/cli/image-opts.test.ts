// qemu-img's --object secret and --image-opts spellings: secrets land in the engine's store (data,
// file, base64), malformed ones are VDISK_EINVAL, and an --image-opts operand splits into file, driver
// and driver options, named back as qemu-img names it (json:{...} in QDict order).

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defineCliSecrets, imageOptsFilename, parseImageOpts } from '../../../src/cli/image-opts.ts';
import { clearSecrets, lookupSecret } from '../../../src/engine/crypto/secrets.ts';
import { scratchDir } from '../../helpers/format-harness.ts';

afterAll(() => clearSecrets());

describe('defineCliSecrets', () => {
  it('defines data=, file= and base64 secrets from anywhere in argv', async () => {
    const { dir, cleanup } = await scratchDir('secrets');
    try {
      const keyFile = join(dir, 'key');
      await writeFile(keyFile, 'from a file');
      defineCliSecrets([
        'info',
        '--object',
        'secret,id=a,data=plain,,with comma',
        `--object=secret,id=b,file=${keyFile}`,
        '--object',
        `secret,id=c,data=${Buffer.from('decoded').toString('base64')},format=base64`,
        '--object',
        'tls-creds-psk,id=t,dir=/nowhere',
        'image',
      ]);
      expect(lookupSecret('a', 'x').toString()).toBe('plain,with comma');
      expect(lookupSecret('b', 'x').toString()).toBe('from a file');
      expect(lookupSecret('c', 'x').toString()).toBe('decoded');
      expect(() => lookupSecret('t', 'encrypt.key-secret')).toThrow(
        expect.objectContaining({ code: 'VDISK_EINVAL', option: 'encrypt.key-secret' }),
      );
    } finally {
      await cleanup();
    }
  });

  for (const text of [
    'secret,data=x',
    'secret,id=s',
    'secret,id=s,data=x,file=/y',
    'secret,id=s,data=x,format=hex',
  ]) {
    it(`refuses '${text}' with VDISK_EINVAL`, () => {
      expect(() => defineCliSecrets(['--object', text])).toThrow(
        expect.objectContaining({ code: 'VDISK_EINVAL' }),
      );
    });
  }
});

describe('--image-opts operands', () => {
  it('splits driver, file and driver options and names them as qemu-img does', () => {
    const qcow2 = parseImageOpts('driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=sec0');
    expect(qcow2).toEqual({
      path: 'a.qcow2',
      format: 'qcow2',
      driverOptions: { 'encrypt.key-secret': 'sec0' },
    });
    // Strings qemu-img 7.2 printed for these operands.
    expect(imageOptsFilename(qcow2)).toBe(
      'json:{"encrypt.key-secret": "sec0", "driver": "qcow2", "file": {"driver": "file", "filename": "a.qcow2"}}',
    );
    expect(imageOptsFilename(parseImageOpts('driver=luks,file.filename=q.luks,key-secret=sec0'))).toBe(
      'json:{"driver": "luks", "file": {"driver": "file", "filename": "q.luks"}, "key-secret": "sec0"}',
    );
  });

  it('refuses an operand that names no file', () => {
    expect(() => parseImageOpts('driver=qcow2')).toThrow(expect.objectContaining({ code: 'VDISK_EINVAL' }));
  });
});
