// zlib deflate on node:zlib's thread pool, as a promise: a driver with many independent units to
// compress (stream-optimized VMDK grains) deflates them together on both cores instead of one after
// another on the event loop. Same library and options as deflateSync, so the same bytes. (Inflating
// stays synchronous: a thread-pool round trip costs more than inflating a grain.)

import type { ZlibOptions } from 'node:zlib';
import { zlib } from '../../lazy-zlib.ts';

/** zlib-wrapped deflate of `data` (what deflateSync returns for the same options). */
export function deflateAsync(data: Uint8Array, options: ZlibOptions = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    zlib().deflate(data, options, (err, output) => (err ? reject(err) : resolve(output)));
  });
}
