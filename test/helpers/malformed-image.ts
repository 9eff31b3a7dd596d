// Table-driven malformed-input suite for a format driver: build a small valid image with the driver,
// then (1) each listed edit of its bytes must make opening and reading fail with the expected error
// fields, and (2) random byte overwrites at the listed offsets never escape as anything but a VdiskError.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../src/engine/errors.ts';
import { openImage } from '../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from './format-harness.ts';

/** One edit of the valid image's bytes and the fields (toMatchObject) of the error opening it must throw. */
export type MalformedEdit = [mutate: (view: DataView) => void, expected: Record<string, unknown>];

export interface MalformedImageSpec {
  format: string;
  /** Name of the valid image in the scratch folder. */
  fileName: string;
  sizeBytes: number;
  createOptions?: Record<string, string>;
  /** Guest bytes written into the valid image, so that its tables hold entries to damage. */
  write: { offsetBytes: number; lengthBytes: number; fill: number };
  /** it() title -> the edits it checks, in order. */
  cases: Record<string, MalformedEdit[]>;
  /** The property test: its it() title and the file offsets it overwrites with random bytes. */
  fuzz: { title: string; offsets: fc.Arbitrary<number> };
}

/** Declares `<format> malformed input`: one it() per case, then the property test (80 runs). */
export function describeMalformedImage(spec: MalformedImageSpec): void {
  describe(`${spec.format} malformed input`, () => {
    let dir: string;
    let cleanup: () => Promise<void>;
    let valid: Uint8Array;
    beforeEach(async () => {
      ({ dir, cleanup } = await scratchDir());
      const path = join(dir, spec.fileName);
      await createWithDriver(spec.format, path, spec.sizeBytes, spec.createOptions);
      const device = await openImage(path);
      await device.write(
        spec.write.offsetBytes,
        new Uint8Array(spec.write.lengthBytes).fill(spec.write.fill),
      );
      await device.close();
      valid = new Uint8Array(await readFile(path));
    });
    afterEach(async () => cleanup());

    const edit = (mutate: (view: DataView) => void): Uint8Array => {
      const bytes = Uint8Array.from(valid);
      mutate(new DataView(bytes.buffer));
      return bytes;
    };

    for (const [title, edits] of Object.entries(spec.cases)) {
      it(title, async () => {
        for (const [mutate, expected] of edits)
          expect(await tryOpenBytes(dir, spec.format, edit(mutate))).toMatchObject(expected);
      });
    }

    it(spec.fuzz.title, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(spec.fuzz.offsets, fc.integer({ min: 0, max: 255 })), {
            minLength: 1,
            maxLength: 6,
          }),
          async (edits) => {
            const bytes = Uint8Array.from(valid);
            for (const [at, value] of edits) bytes[at] = value;
            const err = await tryOpenBytes(dir, spec.format, bytes);
            expect(err === undefined || isVdiskError(err)).toBe(true);
          },
        ),
        { numRuns: 80 },
      );
    });
  });
}
