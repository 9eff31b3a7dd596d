// LUKS1's anti-forensic splitter: a key becomes `stripes` blocks of the same size, every one needed to
// recover it, so overwriting any part of a keyslot destroys the key. LUKS1 on-disk format
// specification (cryptsetup), section "AF-Splitter": diffusion hashes each digest-sized block with its
// big-endian 32-bit index in front.

import { createHash, randomBytes } from '../lazy-crypto.ts';
import { nodeHashName } from './sector-cipher.ts';

/** H(block): each digest-sized piece i of `data` becomes hash(be32(i) || piece), cut to the piece's size. */
function diffuse(data: Buffer, hash: string): Buffer {
  const nodeHash = nodeHashName(hash) ?? hash;
  const digestBytes = createHash(nodeHash).digest().length;
  const out = Buffer.alloc(data.length);
  const index = Buffer.alloc(4);
  for (let at = 0, block = 0; at < data.length; at += digestBytes, block++) {
    const piece = data.subarray(at, Math.min(at + digestBytes, data.length));
    index.writeUInt32BE(block, 0);
    createHash(nodeHash).update(index).update(piece).digest().copy(out, at, 0, piece.length);
  }
  return out;
}

function xorInto(target: Buffer, source: Uint8Array): void {
  for (let i = 0; i < target.length; i++) target[i] = (target[i] ?? 0) ^ (source[i] ?? 0);
}

/** Splits `key` into `stripes` blocks (key.length * stripes bytes): random blocks, the last one recovering the key. */
export function afSplit(key: Uint8Array, stripes: number, hash: string): Buffer {
  const blockBytes = key.length;
  const out = randomBytes(blockBytes * stripes);
  let mixed: Buffer = Buffer.alloc(blockBytes);
  for (let stripe = 0; stripe < stripes - 1; stripe++) {
    xorInto(mixed, out.subarray(stripe * blockBytes, (stripe + 1) * blockBytes));
    mixed = diffuse(mixed, hash);
  }
  const last = Buffer.from(key);
  xorInto(last, mixed);
  last.copy(out, (stripes - 1) * blockBytes);
  return out;
}

/** Recovers a `keyBytes` key from `material` (keyBytes * stripes bytes, see afSplit). */
export function afMerge(material: Uint8Array, keyBytes: number, stripes: number, hash: string): Buffer {
  let mixed: Buffer = Buffer.alloc(keyBytes);
  for (let stripe = 0; stripe < stripes - 1; stripe++) {
    xorInto(mixed, material.subarray(stripe * keyBytes, (stripe + 1) * keyBytes));
    mixed = diffuse(mixed, hash);
  }
  xorInto(mixed, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes));
  return mixed;
}
