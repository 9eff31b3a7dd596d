// vdisk's LZFSE decoder against streams made by Apple's reference lzfse (fixtures, see
// test/fixtures/images/README.md): FSE v2 blocks (text and binary) and an LZVN block decode to the
// exact input; truncated and mutated streams fail with an Error, never hang or over-allocate.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeLzfse } from '../../../../../src/engine/formats/dmg/lzfse.ts';

const FIXTURES = join(import.meta.dirname, '../../../../fixtures/images/dmg');

function text(lengthBytes: number): Uint8Array {
  let out = '';
  for (let i = 0; out.length < lengthBytes; i++)
    out += `line ${i}: the quick brown fox jumps over ${(i * 7) % 1000} lazy dogs\n`;
  return Buffer.from(out.slice(0, lengthBytes), 'latin1');
}

function mixed(lengthBytes: number): Uint8Array {
  return Uint8Array.from({ length: lengthBytes }, (_, i) => Math.floor((i * i * 31 + i * 7) / 8) & 0xff);
}

const CASES: [string, Uint8Array][] = [
  ['lzfse-text-300k', text(300000)],
  ['lzfse-small-3000', text(3000)],
  ['lzfse-mixed-70k', mixed(70000)],
];

describe('LZFSE decoder', () => {
  for (const [name, plain] of CASES) {
    it(`decodes ${name} (reference encoder) byte-exact`, () => {
      const stream = readFileSync(join(FIXTURES, `${name}.lzfse`));
      const decoded = decodeLzfse(stream, plain.length);
      expect(Buffer.from(decoded).equals(Buffer.from(plain))).toBe(true);
    });
  }

  it('refuses output larger or smaller than declared', () => {
    const stream = readFileSync(join(FIXTURES, 'lzfse-text-300k.lzfse'));
    expect(() => decodeLzfse(stream, 1000)).toThrow(/larger than the declared/);
    expect(() => decodeLzfse(stream, 400000)).toThrow(/not 400000/);
  });

  it('fails cleanly on truncated and mutated streams', () => {
    const stream = readFileSync(join(FIXTURES, 'lzfse-mixed-70k.lzfse'));
    expect(() => decodeLzfse(stream.subarray(0, stream.length - 100), 70000)).toThrow();
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: stream.length - 1 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 4,
        }),
        (edits) => {
          const bytes = Uint8Array.from(stream);
          for (const [at, value] of edits) bytes[at] = value;
          try {
            expect(decodeLzfse(bytes, 70000).length).toBe(70000);
          } catch (err) {
            expect(err).toBeInstanceOf(Error);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
