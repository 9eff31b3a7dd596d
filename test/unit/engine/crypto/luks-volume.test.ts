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
