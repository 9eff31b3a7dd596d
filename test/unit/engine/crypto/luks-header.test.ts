// LUKS1 phdr parsing: a header qemu-img 7.2 wrote (qcow2 encrypt.format=luks, iter-time=10) parses to
// the fields qemu-img info printed for it, survives a serialize round trip, and hostile fields give
// VDISK_EFORMAT at their offset before anything is sized from them.

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  LUKS_MAX_ITERATIONS,
  parseLuksHeader,
  serializeLuksHeader,
} from '../../../../src/engine/crypto/luks-header.ts';
import { luksInfo } from '../../../../src/engine/crypto/luks-volume.ts';
import {
  CRYPT_SECTOR_BYTES,
  parseCipherSpec,
  SectorCipher,
} from '../../../../src/engine/crypto/sector-cipher.ts';

/** The 592-byte phdr of a qemu-made image (made by: qemu-img create -f qcow2 --object secret,id=sec0,data=abc -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 a.qcow2 64M). */
const QEMU_PHDR = Buffer.from(
  '4c554b53babe000161657300000000000000000000000000000000000000000000000000000000007874732d706c61696e3634000000000000000000000000000000000000000000736861323536000000000000000000000000000000000000000000000000000000000fc800000040d6470fc9f1dd7a81e72fe4825b56a9f5d38be8e12f731f40cf3b32df664a162f673e2ec4a0dd73b5c51f9e677cfb171db40474450000292b65306339343561352d366431632d346264642d386262652d6433333265666434646634350000000000ac71f30000ab5a3a34815a62c153bab768f24ead58e21da5f1eef924bb192aaa0cfe8ebe4f4c7e0000000800000fa00000dead0000000000000000000000000000000000000000000000000000000000000000000000000000020000000fa00000dead000000000000000000000000000000000000000000000000000000000000000000000000000003f800000fa00000dead000000000000000000000000000000000000000000000000000000000000000000000000000005f000000fa00000dead000000000000000000000000000000000000000000000000000000000000000000000000000007e800000fa00000dead000000000000000000000000000000000000000000000000000000000000000000000000000009e000000fa00000dead00000000000000000000000000000000000000000000000000000000000000000000000000000bd800000fa00000dead00000000000000000000000000000000000000000000000000000000000000000000000000000dd000000fa0',
  'hex',
);
const REGION_BYTES = 2_068_480;

describe('parseLuksHeader', () => {
  it('reads the fields qemu-img info shows for a qemu-made header', () => {
    const header = parseLuksHeader(QEMU_PHDR, 'a.qcow2', 0x40000, REGION_BYTES);
    expect(header).toMatchObject({
      cipherName: 'aes',
      cipherMode: 'xts-plain64',
      hashSpec: 'sha256',
      keyBytes: 64,
      payloadOffsetSectors: 4040,
      mkDigestIterations: 10539,
      uuid: 'e0c945a5-6d1c-4bdd-8bbe-d332efd4df45',
    });
    expect(header.keyslots.map((slot) => slot.active)).toEqual([
      true,
      false,
      false,
      false,
      false,
      false,
      false,
      false,
    ]);
    expect(luksInfo(header)).toMatchObject({
      'cipher-alg': 'aes-256',
      'cipher-mode': 'xts',
      'ivgen-alg': 'plain64',
      'payload-offset': REGION_BYTES,
      'master-key-iters': 10539,
      slots: expect.arrayContaining([{ active: true, iters: 43866, 'key-offset': 4096, stripes: 4000 }]),
    });
    expect(serializeLuksHeader(header)).toEqual(QEMU_PHDR);
  });

  const mutate = (at: number, value: number): Buffer => {
    const copy = Buffer.from(QEMU_PHDR);
    copy.writeUInt32BE(value, at);
    return copy;
  };

  for (const [what, at, value] of [
    ['master key digest iterations above the cap', 164, LUKS_MAX_ITERATIONS + 1],
    ['zero keyslot iterations', 212, 0],
    ['a 65-byte key', 108, 65],
    ['1 stripe', 208 + 44, 1],
    ['key material inside the phdr', 208 + 40, 0],
    ['keyslot 1 material overlapping keyslot 0', 208 + 48 + 40, 100],
    ['a keyslot state that is neither enabled nor disabled', 208 + 48, 0x12345678],
    ['a payload past the header area', 104, 0xffffffff],
  ] as const) {
    it(`refuses ${what} with VDISK_EFORMAT at offset base + ${at}`, () => {
      expect(() => parseLuksHeader(mutate(at, value), 'a.qcow2', 0x40000, REGION_BYTES)).toThrow(
        expect.objectContaining({ code: 'VDISK_EFORMAT', offsetBytes: 0x40000 + at }),
      );
    });
  }

  it('refuses a cipher vdisk has no implementation of as VDISK_ENOTSUP naming it', () => {
    const copy = Buffer.from(QEMU_PHDR);
    copy.fill(0, 8, 40);
    copy.write('blowfish', 8, 'latin1');
    expect(() => parseLuksHeader(copy, 'a.qcow2', 0, REGION_BYTES)).toThrow(
      expect.objectContaining({ code: 'VDISK_ENOTSUP', message: expect.stringContaining('blowfish-') }),
    );
  });

  it('accepts the ciphers written in TypeScript (serpent, twofish, cast5)', () => {
    for (const name of ['serpent', 'twofish']) {
      const copy = Buffer.from(QEMU_PHDR);
      copy.fill(0, 8, 40);
      copy.write(name, 8, 'latin1');
      expect(parseLuksHeader(copy, 'a.qcow2', 0, REGION_BYTES).cipherName).toBe(name);
    }
  });
});

describe('SectorCipher', () => {
  for (const mode of ['xts-plain64', 'cbc-essiv:sha256', 'cbc-plain', 'ecb'] as const) {
    it(`round-trips and ties each sector to its number (${mode})`, () => {
      const keyBytes = mode.startsWith('xts') ? 64 : 32;
      const cipher = new SectorCipher(
        parseCipherSpec('aes', mode, keyBytes),
        Buffer.alloc(keyBytes, 0x3c).map((b, i) => b ^ i),
      );
      const plain = Buffer.alloc(2 * CRYPT_SECTOR_BYTES, 0xa5);
      const stored = cipher.encrypt(plain, 1000);
      expect(cipher.decrypt(stored, 1000)).toEqual(plain);
      const sameSectorTwice = stored.subarray(0, 512).equals(stored.subarray(512));
      expect(sameSectorTwice).toBe(mode === 'ecb');
    });
  }

  for (const [mode, keyBytes] of [
    ['xts-plain64', 64],
    ['xts-plain64', 32],
    ['xts-plain', 64],
    ['cbc-essiv:sha256', 16],
    ['cbc-plain64', 32],
  ] as const) {
    it(`bulk ${mode} (${keyBytes}-byte key) equals one node:crypto cipher per sector`, () => {
      const key = randomBytes(keyBytes);
      const cipher = new SectorCipher(parseCipherSpec('aes', mode, keyBytes), key);
      const data = randomBytes(37 * CRYPT_SECTOR_BYTES);
      const firstSector = 2 ** 40 + 5;
      expect(cipher.encrypt(data, firstSector)).toEqual(cipher.runPerSector(true, data, firstSector));
      expect(cipher.decrypt(data, firstSector)).toEqual(cipher.runPerSector(false, data, firstSector));
    });
  }
});
