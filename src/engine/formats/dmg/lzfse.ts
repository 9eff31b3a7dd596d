// LZFSE decompression for ULFO chunks (type 0x80000007): the block container ("bvx$" end, "bvx-" stored,
// "bvxn" LZVN, "bvx1"/"bvx2" FSE) as Apple's lzfse reference describes it (lzfse_internal.h). This build
// decodes stored blocks; FSE and LZVN blocks are refused with a clear error (TODO(issue 4): FSE/LZVN).
// Output is bounded by the chunk's declared size.

const MAGIC_END = 0x24787662; // "bvx$"
const MAGIC_STORED = 0x2d787662; // "bvx-"

/** Decodes an LZFSE stream into exactly `outputBytes` bytes; throws Error on anything else. */
export function decodeLzfse(input: Uint8Array, outputBytes: number): Uint8Array {
  const out = new Uint8Array(outputBytes);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  let inAt = 0;
  let outAt = 0;
  for (;;) {
    if (inAt + 4 > input.length) throw new Error('LZFSE stream truncated (no end-of-stream block)');
    const magic = view.getUint32(inAt, true);
    if (magic === MAGIC_END) break;
    if (magic !== MAGIC_STORED)
      throw new Error(`LZFSE block type 0x${magic.toString(16)} is not supported by this build`);
    if (inAt + 8 > input.length) throw new Error('LZFSE stored block header truncated');
    const rawBytes = view.getUint32(inAt + 4, true);
    if (inAt + 8 + rawBytes > input.length) throw new Error('LZFSE stored block truncated');
    if (outAt + rawBytes > outputBytes) throw new Error('LZFSE output larger than the declared chunk size');
    out.set(input.subarray(inAt + 8, inAt + 8 + rawBytes), outAt);
    outAt += rawBytes;
    inAt += 8 + rawBytes;
  }
  if (outAt !== outputBytes) throw new Error(`LZFSE stream decodes to ${outAt} bytes, not ${outputBytes}`);
  return out;
}
