// Malformed dmg images give clear errors: a plist lying about a chunk's sector count, a chunk past EOF,
// absurd chunk sizes, zlib/bzip2/ADC bombs bounded by the declared size, a missing trailer; and
// fast-check mutations of the trailer and stored chunks never escape as anything but a VdiskError.

import fc from 'fast-check';
import { deflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../../../src/engine/errors.ts';
import { decodeAdc } from '../../../../../src/engine/formats/dmg/adc.ts';
import { decodeBzip2 } from '../../../../../src/engine/formats/dmg/bzip2.ts';
import { has, scratchDir, seededBytes, tryOpenBytes } from '../../../../helpers/format-harness.ts';
import { buildDmg } from './build-dmg.ts';
import { execFileSync } from 'node:child_process';

describe('dmg malformed input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await scratchDir()));
  afterEach(async () => cleanup());

  it('refuses a plist that claims more sectors than a zlib chunk holds', async () => {
    const bytes = buildDmg([{ kind: 'zlib', content: seededBytes(4096, 1), sectorCount: 16 }]);
    expect(await tryOpenBytes(dir, 'dmg', bytes, 'a.dmg')).toMatchObject({
      code: 'VDISK_ECORRUPT',
      offsetBytes: 0,
    });
  });

  it('bounds a zlib bomb by the declared chunk size', async () => {
    const bomb = deflateSync(new Uint8Array(32 << 20));
    const bytes = buildDmg([{ kind: 'zlib', content: new Uint8Array(4096), stored: bomb }]);
    expect(await tryOpenBytes(dir, 'dmg', bytes, 'b.dmg')).toMatchObject({ code: 'VDISK_ECORRUPT' });
  });

  it('refuses a chunk of more than 64 MiB', async () => {
    const bytes = buildDmg([{ kind: 'zero', content: new Uint8Array(512), sectorCount: 1 << 20 }]);
    expect(await tryOpenBytes(dir, 'dmg', bytes, 'c.dmg')).toMatchObject({ code: 'VDISK_ECORRUPT' });
  });

  it('refuses a file without a koly trailer', async () => {
    expect(await tryOpenBytes(dir, 'dmg', new Uint8Array(4096), 'd.dmg')).toMatchObject({
      code: 'VDISK_EFORMAT',
    });
  });

  it.skipIf(!has('bzip2'))('bounds a bzip2 bomb by the declared size', () => {
    const bomb = execFileSync('bzip2', ['-c'], { input: new Uint8Array(8 << 20) });
    expect(() => decodeBzip2(bomb, 1 << 20)).toThrow(/larger than the declared/);
    expect(decodeBzip2(bomb, 8 << 20).every((byte) => byte === 0)).toBe(true);
  });

  it('bounds ADC back references and output', () => {
    expect(() => decodeAdc(Uint8Array.from([0x40, 0, 0]), 16)).toThrow(/out of range/);
    expect(() => decodeAdc(Uint8Array.from([0x83, 1, 2, 3, 4, 0x7f, 0]), 6)).toThrow();
  });

  it('never throws anything but a VdiskError on mutated trailers and chunks', async () => {
    const valid = buildDmg([
      { kind: 'zlib', content: seededBytes(4096, 2) },
      { kind: 'raw', content: seededBytes(1024, 3) },
      { kind: 'adc-literal', content: seededBytes(512, 4) },
    ]);
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(
            fc.oneof(
              fc.integer({ min: 0, max: 300 }),
              fc.integer({ min: valid.length - 512, max: valid.length - 1 }),
            ),
            fc.integer({ min: 0, max: 255 }),
          ),
          { minLength: 1, maxLength: 6 },
        ),
        async (edits) => {
          const bytes = Uint8Array.from(valid);
          for (const [at, value] of edits) bytes[at] = value;
          const err = await tryOpenBytes(dir, 'dmg', bytes, 'f.dmg');
          expect(err === undefined || isVdiskError(err)).toBe(true);
        },
      ),
      { numRuns: 60 },
    );
  });
});
