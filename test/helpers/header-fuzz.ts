// Property-test helper for format drivers: mutate bytes of a valid image's metadata (header, tables)
// and check that opening and reading the result either works or fails with a VdiskError (a code), never
// a crash, a hang or an unbounded allocation (reads are capped; each case has a time budget).

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { isVdiskError } from '../../src/engine/errors.ts';
import { openImage } from '../../src/engine/open.ts';

export interface HeaderFuzzOptions {
  /** A valid image to mutate. */
  pristinePath: string;
  format: string;
  /** Scratch folder for the mutated copies. */
  dir: string;
  /** Mutations land in [metadataStartBytes, metadataStartBytes + metadataBytes) of the file. */
  metadataBytes: number;
  /** Start of the mutated region (default 0; negative counts from the end of the file). */
  metadataStartBytes?: number;
  numRuns?: number;
  seed?: number;
}

const READ_CAP_BYTES = 4 * 1024 * 1024;

/** Opens, stats and reads (capped) one mutated image; rethrows anything that is not a VdiskError. */
async function exercise(path: string, format: string): Promise<void> {
  try {
    const device = await openImage(path, { readOnly: true, format });
    try {
      await device.info();
      const lengthBytes = Math.min(device.sizeBytes, READ_CAP_BYTES);
      await device.blockStatus(0, lengthBytes);
      await device.read(0, new Uint8Array(lengthBytes));
      if (device.sizeBytes > lengthBytes) await device.read(device.sizeBytes - 512, new Uint8Array(512));
    } finally {
      await device.close();
    }
  } catch (err) {
    if (!isVdiskError(err)) throw err;
  }
}

/** Runs the property: any set of byte/u32 overwrites in the metadata gives success or a VdiskError. */
export async function fuzzHeaders(options: HeaderFuzzOptions): Promise<void> {
  const pristine = await readFile(options.pristinePath);
  const startRaw = options.metadataStartBytes ?? 0;
  const start = startRaw < 0 ? pristine.length + startRaw : startRaw;
  const limit = Math.min(options.metadataBytes, pristine.length - start);
  const mutation = fc.oneof(
    fc
      .record({ at: fc.nat(limit - 1), byte: fc.integer({ min: 0, max: 255 }) })
      .map((m) => ({ ...m, width: 1 as const })),
    fc
      .record({
        at: fc.nat(Math.max(0, limit - 4)),
        word: fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff, 0x80000000, 0x200, 0xfffffffe),
      })
      .map((m) => ({ at: m.at, byte: m.word, width: 4 as const })),
  );
  let counter = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 6 }), async (mutations) => {
      const bytes = Buffer.from(pristine);
      for (const m of mutations) {
        if (m.width === 1) bytes[start + m.at] = m.byte;
        else bytes.writeUInt32LE(m.byte >>> 0, start + m.at);
      }
      const path = join(options.dir, `mutant-${counter++ % 4}.${options.format}`);
      await writeFile(path, bytes);
      await exercise(path, options.format);
    }),
    { numRuns: options.numRuns ?? 150, seed: options.seed ?? 4242, interruptAfterTimeLimit: 30_000 },
  );
}

/**
 * Truncates copies of a valid image at `cutPoints` (bytes; negative counts from the end) and exercises
 * each: success or a VdiskError only. Returns the error codes seen, one per cut (undefined: it opened).
 */
export async function exerciseTruncations(
  pristinePath: string,
  format: string,
  dir: string,
  cutPoints: number[],
): Promise<Array<string | undefined>> {
  const pristine = await readFile(pristinePath);
  const codes: Array<string | undefined> = [];
  for (const cut of cutPoints) {
    const length = cut < 0 ? pristine.length + cut : cut;
    const path = join(dir, `truncated-${length}.${format}`);
    await writeFile(path, pristine.subarray(0, length));
    try {
      const device = await openImage(path, { readOnly: true, format });
      try {
        await device.read(0, new Uint8Array(Math.min(device.sizeBytes, READ_CAP_BYTES)));
        await device.blockStatus(0, device.sizeBytes);
        codes.push(undefined);
      } finally {
        await device.close();
      }
    } catch (err) {
      if (!isVdiskError(err)) throw err;
      codes.push(err.code);
    }
  }
  return codes;
}
