// The benchmark's guest: a sparse raw file where every 4 MiB holds 2 MiB of seeded pseudo-random
// data, 1 MiB of written zeros and a 1 MiB hole, so half is data and half reads as zeros, and both
// sparse detection (-S) and hole skipping (SEEK_DATA) are exercised. Seeded: every run is the same.

import { execFileSync } from 'node:child_process';
import { open, truncate } from 'node:fs/promises';
import { join } from 'node:path';

const MiB = 1024 * 1024;

/** xorshift32 filling `buffer`; returns the next state. */
function fillRandom(buffer: Uint8Array, seed: number): number {
  const words = new Uint32Array(buffer.buffer, buffer.byteOffset, buffer.length / 4);
  let state = seed >>> 0 || 1;
  for (let index = 0; index < words.length; index += 1) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    words[index] = state;
  }
  return state;
}

/** Writes the guest to `path` (`sizeMib` a multiple of 4). */
export async function makeGuest(path: string, sizeMib: number, seed = 0x5eed): Promise<void> {
  const handle = await open(path, 'w');
  try {
    const data = new Uint8Array(2 * MiB);
    const zeros = new Uint8Array(MiB);
    let state = seed;
    for (let offsetMib = 0; offsetMib < sizeMib; offsetMib += 4) {
      state = fillRandom(data, state);
      await handle.write(data, 0, data.length, offsetMib * MiB);
      await handle.write(zeros, 0, zeros.length, (offsetMib + 2) * MiB);
    }
  } finally {
    await handle.close();
  }
  await truncate(path, sizeMib * MiB);
}

/**
 * The backing chain the benches convert and commit: `base.qcow2` (qemu-img's conversion of the guest
 * at `guestPath`) and `top.qcow2` over it in `dir`, rewriting an eighth of the guest.
 */
export function makeChain(dir: string, guestPath: string, sizeMib: number): void {
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', guestPath, join(dir, 'base.qcow2')]);
  execFileSync('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-b',
    'base.qcow2',
    '-F',
    'qcow2',
    join(dir, 'top.qcow2'),
  ]);
  const eighthMib = Math.max(1, Math.floor(sizeMib / 8));
  execFileSync(
    'qemu-io',
    ['-f', 'qcow2', '-c', `write -P 0x5a ${sizeMib / 4}M ${eighthMib}M`, join(dir, 'top.qcow2')],
    { stdio: 'ignore' },
  );
}
