// Builds cloop V2.0 images from the published layout (cloop's compressed_loop.h): the shell preamble,
// block size and count (u32 BE), n+1 u64 BE offsets, then one zlib stream per block.

import { deflateSync } from 'node:zlib';

const MAGIC = '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';

/** Compresses `content` (a whole number of blocks) into cloop image bytes. */
export function buildCloop(content: Uint8Array, blockBytes: number): Uint8Array {
  const blockCount = content.length / blockBytes;
  const blocks: Buffer[] = [];
  for (let i = 0; i < blockCount; i++)
    blocks.push(deflateSync(content.subarray(i * blockBytes, (i + 1) * blockBytes)));
  const tableAt = 136;
  const dataAt = tableAt + (blockCount + 1) * 8;
  const image = new Uint8Array(dataAt + blocks.reduce((sum, block) => sum + block.length, 0));
  const view = new DataView(image.buffer);
  image.set(Buffer.from(MAGIC, 'latin1'), 0);
  view.setUint32(128, blockBytes, false);
  view.setUint32(132, blockCount, false);
  let at = dataAt;
  blocks.forEach((block, i) => {
    view.setBigUint64(tableAt + i * 8, BigInt(at), false);
    image.set(block, at);
    at += block.length;
  });
  view.setBigUint64(tableAt + blockCount * 8, BigInt(at), false);
  return image;
}
