// Test helpers for the format drivers: scratch folders, tool detection, decompressing samples into a
// scratch folder, creating images through a driver, and hashing a device's guest content by streaming
// (zero and unallocated runs are hashed from one reused zero buffer, so a 10 GiB sparse image is fast).

import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { expect } from 'vitest';
import type { BlockDevice } from '../../src/engine/block-device.ts';
import type { CheckReport, RepairMode } from '../../src/engine/formats/driver.ts';
import { findDriver } from '../../src/engine/formats/registry.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';

/**
 * Third-party sample images, read in place (never copied into the repository): `$VDISK_SAMPLES_DIR`, else
 * `shared/samples` beside the repository (where CI lays it next to its clone), else the workplace copy.
 */
export const SAMPLES_DIR = ((): string => {
  const candidates = [
    process.env.VDISK_SAMPLES_DIR,
    join(import.meta.dirname, '..', '..', '..', 'shared', 'samples'),
    '/work/shared/samples',
  ];
  return (
    candidates.find((dir) => dir !== undefined && existsSync(join(dir, 'README.md'))) ??
    '/work/shared/samples'
  );
})();

/** True when `tool` runs from PATH (with `alsoSbin`, from /usr/sbin and /sbin too: fdisk, sfdisk). */
export function has(tool: string, alsoSbin = false): boolean {
  const env = alsoSbin ? { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } : undefined;
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore', env }).status === 0;
}

/**
 * The `tools` not on PATH; when any is, warns loudly that `what` is skipped and which Debian packages
 * to install (the caller's describe block skips).
 */
export function missingTools(tools: string[], what: string, packages = 'qemu-utils'): string[] {
  const missing = tools.filter((tool) => !has(tool));
  if (missing.length > 0)
    console.warn(`SKIPPED ${what}: missing ${missing.join(', ')} (apt-get install ${packages})`);
  return missing;
}

/** True when every one of `tools` is on PATH; otherwise warns as missingTools does. */
export function haveTools(tools: string[], what: string, packages = 'qemu-utils'): boolean {
  return missingTools(tools, what, packages).length === 0;
}

/**
 * Whether the opt-in checks of huge samples run (VDISK_HUGE_SAMPLES=1); when not, warns loudly that
 * `what` is skipped and what is checked `instead`.
 */
export function hugeSamplesEnabled(what: string, instead: string): boolean {
  const enabled = process.env.VDISK_HUGE_SAMPLES === '1';
  if (!enabled) console.warn(`SKIPPING ${what} (set VDISK_HUGE_SAMPLES=1); ${instead}`);
  return enabled;
}

/** A fresh folder `vdisk-<prefix>-*` under the OS temp dir and its remover. */
export async function scratchDir(prefix = 'fmt'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `vdisk-${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Runs a command, returns stdout; throws with stderr on failure. */
export function run(command: string, args: string[]): string {
  return execFileSync(command, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
  });
}

/** Runs a command (from `cwd` when given) and returns its exit status and output without throwing. */
export function runStatus(
  command: string,
  args: string[],
  cwd?: string,
): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** Copies a sample into `dir`, decompressing `.gz` / `.bz2`; returns the new path. */
export async function unpackSample(samplePath: string, dir: string): Promise<string> {
  const name = basename(samplePath).replace(/\.(gz|bz2)$/, '');
  const target = join(dir, name);
  if (samplePath.endsWith('.gz')) {
    await pipeline(createReadStream(samplePath), createGunzip(), createWriteStream(target));
  } else if (samplePath.endsWith('.bz2')) {
    execFileSync('sh', [
      '-c',
      'bzip2 -dc "$1" | cp --sparse=always /dev/stdin "$2"',
      'sh',
      samplePath,
      target,
    ]);
  } else {
    execFileSync('cp', ['--sparse=always', samplePath, target]);
  }
  return target;
}

/** sha256 of a file's bytes. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

const ZEROS = new Uint8Array(1 << 20);

/** sha256 of a device's guest content; runs that block status calls zero are not read. */
export async function sha256Device(device: BlockDevice): Promise<string> {
  const hash = createHash('sha256');
  const buffer = new Uint8Array(1 << 20);
  let at = 0;
  while (at < device.sizeBytes) {
    const extents = await device.blockStatus(at, Math.min(device.sizeBytes - at, 1 << 30));
    for (const extent of extents) {
      let done = 0;
      while (done < extent.lengthBytes) {
        const step = Math.min(buffer.length, extent.lengthBytes - done);
        if (extent.zero) hash.update(ZEROS.subarray(0, step));
        else {
          const part = buffer.subarray(0, step);
          await device.read(extent.offsetBytes + done, part);
          hash.update(part);
        }
        done += step;
      }
      at = extent.offsetBytes + extent.lengthBytes;
    }
    if (extents.length === 0) throw new Error(`blockStatus returned no extents at ${at}`);
  }
  return hash.digest('hex');
}

/**
 * Opens `path` read-only (as `openFormat` when given, else probed) and expects its format, guest size
 * and content sha256, then runs `more` on the device before closing it.
 */
export async function expectImageContent(
  path: string,
  expected: { format: string; sizeBytes: number; sha256: string },
  options: { openFormat?: string | undefined; more?: (device: BlockDevice) => Promise<void> } = {},
): Promise<void> {
  const { openImage } = await import('../../src/engine/open.ts');
  const device = await openImage(path, { readOnly: true, format: options.openFormat });
  try {
    expect(device.formatName).toBe(expected.format);
    expect(device.sizeBytes).toBe(expected.sizeBytes);
    expect(await sha256Device(device)).toBe(expected.sha256);
    await options.more?.(device);
  } finally {
    await device.close();
  }
}

/** sha256 of what `qemu-img convert -O raw` makes of `path` (via a sparse temp file in `dir`). */
export async function qemuRawSha256(path: string, dir: string, format?: string): Promise<string> {
  const out = join(dir, `${basename(path)}.qemu-raw`);
  run('qemu-img', ['convert', ...(format ? ['-f', format] : []), '-O', 'raw', path, out]);
  const digest = await sha256File(out);
  await rm(out, { force: true });
  return digest;
}

/** Creates an image with a driver's create() (as `vdisk create` would). */
export async function createWithDriver(
  format: string,
  path: string,
  sizeBytes: number,
  options: Record<string, string> = {},
  backing?: { file: string; format?: string },
): Promise<void> {
  const file = await NodeHostFile.open(path, { readOnly: false, create: true });
  try {
    await findDriver(format).create!({
      path,
      file,
      sizeBytes,
      options,
      backingFile: backing?.file,
      backingFormat: backing?.format,
      openBacking: undefined,
    });
  } finally {
    await file.close();
  }
}

/** Runs `format`'s driver check on `path` (as `vdisk check -r` would): read-only unless it repairs. */
export async function checkWithDriver(
  format: string,
  path: string,
  repair: RepairMode = 'none',
): Promise<CheckReport> {
  const readOnly = repair === 'none';
  const file = await NodeHostFile.open(path, { readOnly });
  try {
    return await findDriver(format).check!(
      { path, file, readOnly, openBacking: undefined, options: {} },
      repair,
    );
  } finally {
    await file.close();
  }
}

/** xorshift32 stream of numbers in [0, 1): reproducible workload decisions for a seed. */
export function prng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/** A deterministic pseudo-random buffer (xorshift32 from `seed`). */
export function seededBytes(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < lengthBytes; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[i] = state & 0xff;
  }
  return bytes;
}

/**
 * Writes a raw guest image in `dir` with an MBR holding two partitions, seeded data runs and zero runs
 * between them; returns its path. `sizeBytes` should be >= 4 MiB.
 */
export async function writeSeededRaw(
  dir: string,
  name: string,
  sizeBytes: number,
  seed = 1,
): Promise<string> {
  const path = join(dir, name);
  const file = await NodeHostFile.open(path, { readOnly: false, create: true, truncate: true });
  try {
    await file.truncate(sizeBytes);
    const mbr = new Uint8Array(512);
    const view = new DataView(mbr.buffer);
    const half = Math.floor(sizeBytes / 512 / 2);
    // Two primary partitions (type 0x83) covering the two halves after sector 2048.
    const entries = [
      [2048, half - 2048],
      [half, Math.floor(sizeBytes / 512) - half],
    ] as const;
    entries.forEach(([lba, sectors], i) => {
      const at = 446 + i * 16;
      mbr[at + 4] = 0x83;
      view.setUint32(at + 8, lba, true);
      view.setUint32(at + 12, sectors, true);
    });
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    await file.write(0, mbr);
    const step = Math.max(65536, Math.floor(sizeBytes / 16));
    for (let at = 1 << 20, i = 0; at + 70000 <= sizeBytes; at += step, i++) {
      if (i % 3 === 2) continue; // leave some runs as zeros
      await file.write(at + ((i * 4097) % 4096), seededBytes(70000, seed + i));
    }
    await file.write(sizeBytes - 512, seededBytes(512, seed + 99));
  } finally {
    await file.close();
  }
  return path;
}

/**
 * Copies a raw file's non-zero content into `device` with writes of `chunkBytes` (default an odd size,
 * so writes straddle clusters), as a naive convert would.
 */
export async function copyRawInto(rawPath: string, device: BlockDevice, chunkBytes = 45_000): Promise<void> {
  const file = await NodeHostFile.open(rawPath, { readOnly: true });
  try {
    const sizeBytes = await file.sizeBytes();
    const buffer = new Uint8Array(chunkBytes);
    for (let at = 0; at < sizeBytes; at += chunkBytes) {
      const part = buffer.subarray(0, Math.min(chunkBytes, sizeBytes - at));
      await file.read(at, part);
      if (part.some((byte) => byte !== 0)) await device.write(at, part);
    }
    await device.flush();
  } finally {
    await file.close();
  }
}

/**
 * Writes `bytes` as an image in `dir`, opens it read-only as `format`, reads its first MiB and block
 * status; returns the error thrown (or undefined). For malformed-input tests.
 */
export async function tryOpenBytes(
  dir: string,
  format: string,
  bytes: Uint8Array,
  name = 'bad.img',
): Promise<unknown> {
  const { openImage } = await import('../../src/engine/open.ts');
  const path = join(dir, name);
  const { writeFile } = await import('node:fs/promises');
  await writeFile(path, bytes);
  try {
    const device = await openImage(path, { readOnly: true, format, noBacking: true });
    try {
      await device.read(0, new Uint8Array(Math.min(device.sizeBytes, 1 << 20)));
      await device.blockStatus(0, device.sizeBytes);
      await device.info();
    } finally {
      await device.close();
    }
    return undefined;
  } catch (err) {
    return err;
  }
}
