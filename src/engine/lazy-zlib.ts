// node:zlib, loaded on first use. Importing it loads all of Node's stream modules (~2-3 ms of every
// CLI start-up), which a check, an info or an uncompressed copy never needs; the format drivers call
// deflate and inflate through here instead.

type Zlib = typeof import('node:zlib');

/** The node:zlib module, loaded by the first call. */
export function zlib(): Zlib {
  return process.getBuiltinModule('node:zlib');
}

export const inflateSync: Zlib['inflateSync'] = (buffer, options) => zlib().inflateSync(buffer, options);
export const deflateSync: Zlib['deflateSync'] = (buffer, options) => zlib().deflateSync(buffer, options);
export const inflateRawSync: Zlib['inflateRawSync'] = (buffer, options) =>
  zlib().inflateRawSync(buffer, options);
export const deflateRawSync: Zlib['deflateRawSync'] = (buffer, options) =>
  zlib().deflateRawSync(buffer, options);
