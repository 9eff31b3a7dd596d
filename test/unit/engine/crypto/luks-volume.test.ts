// LUKS1 volumes made by vdisk: the passphrase unlocks keyslot 0 and yields the volume key's cipher, a
// wrong one is VDISK_EPERM, and mutated headers (fast-check) only ever give a VdiskError.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LUKS_PHDR_BYTES, parseLuksHeader } from '../../../../src/engine/crypto/luks-header.ts';
import {
  createLuksVolume,
  type NewLuksVolume,
  parseLuksCreateSettings,
  unlockLuks,
} from '../../../../src/engine/crypto/luks-volume.ts';
import { isVdiskError } from '../../../../src/engine/errors.ts';

const PASSPHRASE = Buffer.from('unit passphrase');

async function smallVolume(options: Record<string, string> = {}): Promise<NewLuksVolume> {
  // iter-time 1 ms: qemu's floor of 1000 iterations applies, so the tests stay fast.
  return createLuksVolume(parseLuksCreateSettings({ 'iter-time': '1', ...options }, ''), PASSPHRASE);
}

function reader(area: Buffer) {
  return async (offsetBytes: number, lengthBytes: number): Promise<Buffer> =>
    Buffer.from(area.subarray(offsetBytes, offsetBytes + lengthBytes));
}

describe('createLuksVolume / unlockLuks', () => {
  const cases: Record<string, string>[] = [
    {},
    { 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'hash-alg': 'sha1' },
  ];
  for (const options of cases) {
    it(`unlocks what it made (${JSON.stringify(options)}) and both ciphers agree`, async () => {
      const volume = await smallVolume(options);
      const area = volume.headerAreaBytes;
      const header = parseLuksHeader(area, 'mem', 0, area.length);
      const { cipher } = await unlockLuks(header, PASSPHRASE, reader(area), 'mem');
      const sector = Buffer.alloc(512, 0x42);
      expect(cipher.encrypt(sector, 7)).toEqual(volume.cipher.encrypt(sector, 7));
    });
  }

  for (const options of [
    { 'cipher-alg': 'twofish-256', 'cipher-mode': 'ctr', 'hash-alg': 'sha256' },
    { 'cipher-alg': 'cast5-128', 'cipher-mode': 'ecb', 'hash-alg': 'md5' },
  ]) {
    it(`makes and unlocks ${JSON.stringify(options)}, naming the IV generator as qemu does`, async () => {
      const volume = await smallVolume(options);
      const area = volume.headerAreaBytes;
      const header = parseLuksHeader(area, 'mem', 0, area.length);
      expect(header.cipherName).toBe(options['cipher-alg'].split('-')[0]);
      expect(header.cipherMode).toBe(`${options['cipher-mode']}-plain64`);
      const { cipher } = await unlockLuks(header, PASSPHRASE, reader(area), 'mem');
      const sector = Buffer.alloc(512, 0x42);
      expect(cipher.encrypt(sector, 3)).toEqual(volume.cipher.encrypt(sector, 3));
    });
  }

  // The messages qemu-img 7.2 prints for the same options (the 192-bit case is vdisk's own: qemu aborts).
  const refusals: [Record<string, string>, string, string][] = [
    [{ 'cipher-alg': 'cast5-128', 'cipher-mode': 'xts' }, 'cipher-mode', 'Unsupported cipher mode xts'],
    [
      { 'cipher-alg': 'cast5-128', 'ivgen-alg': 'essiv', 'cipher-mode': 'cbc' },
      'ivgen-hash-alg',
      'Cipher cast5-128 not supported with essiv',
    ],
    [
      { 'cipher-alg': 'serpent-128', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha384' },
      'ivgen-hash-alg',
      'No Serpent cipher with key size 48 available',
    ],
    [
      { 'cipher-alg': 'aes-128', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha1' },
      'ivgen-hash-alg',
      'No AES cipher with key size 20 available',
    ],
    [{ 'cipher-alg': 'des' }, 'cipher-alg', "Algorithm 'des' not supported"],
    [{ 'cipher-alg': 'sm4' }, 'cipher-alg', "Parameter 'cipher-alg' does not accept value 'sm4'"],
    [
      { 'cipher-alg': 'twofish-192', 'cipher-mode': 'cbc' },
      'cipher-alg',
      '192-bit keys work in xts mode only',
    ],
  ];
  for (const [options, option, message] of refusals) {
    it(`refuses ${JSON.stringify(options)} as qemu-img does`, () => {
      expect(() => parseLuksCreateSettings(options, '')).toThrow(
        expect.objectContaining({ code: 'VDISK_EINVAL', option, message: expect.stringContaining(message) }),
      );
    });
  }

  it('refuses a wrong passphrase with VDISK_EPERM', async () => {
    const volume = await smallVolume();
    const area = volume.headerAreaBytes;
    const header = parseLuksHeader(area, 'mem', 0, area.length);
    await expect(unlockLuks(header, Buffer.from('wrong'), reader(area), 'mem')).rejects.toMatchObject({
      code: 'VDISK_EPERM',
    });
  });

  it('never fails with anything but a VdiskError on mutated headers', async () => {
    const volume = await smallVolume();
    const pristine = volume.headerAreaBytes;
    const mutation = fc.record({
      at: fc.nat(LUKS_PHDR_BYTES - 4),
      word: fc.constantFrom(0, 1, 7, 0x7fffffff, 0xffffffff, 0x80000000, 4000, 64),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 4 }), async (mutations) => {
        const area = Buffer.from(pristine);
        for (const { at, word } of mutations) area.writeUInt32BE(word, at);
        try {
          const header = parseLuksHeader(area, 'mem', 0, area.length);
          // Iterations below the cap are legal; only spend time on cheap ones.
          const cheap =
            header.mkDigestIterations <= 20_000 && header.keyslots.every((slot) => slot.iterations <= 20_000);
          if (cheap) await unlockLuks(header, PASSPHRASE, reader(area), 'mem');
        } catch (err) {
          if (!isVdiskError(err)) throw err;
        }
      }),
      { numRuns: 150, seed: 42 },
    );
  });
});
