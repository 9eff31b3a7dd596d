// Apple Data Compression (ADC), the LZ77 variant of UDCO disk images (chunk type 0x80000004): one-byte
// literal runs and two- or three-byte back references. Beyond qemu, which cannot read ADC chunks.
// Layout: Apple's ADC as documented by the dmg2img/libdmg sources' format notes; output bounded.

/** Decodes `input` into exactly `outputBytes` bytes; throws Error("...") on a malformed stream. */
export function decodeAdc(input: Uint8Array, outputBytes: number): Uint8Array {
  const out = new Uint8Array(outputBytes);
  let inAt = 0;
  let outAt = 0;
  while (inAt < input.length && outAt < outputBytes) {
    const code = input[inAt]!;
    if (code & 0x80) {
      const length = (code & 0x7f) + 1;
      if (inAt + 1 + length > input.length || outAt + length > outputBytes)
        throw new Error('ADC literal run overflows');
      out.set(input.subarray(inAt + 1, inAt + 1 + length), outAt);
      inAt += 1 + length;
      outAt += length;
      continue;
    }
    let length: number;
    let distance: number;
    if (code & 0x40) {
      if (inAt + 3 > input.length) throw new Error('ADC three-byte code truncated');
      length = (code & 0x3f) + 4;
      distance = ((input[inAt + 1]! << 8) | input[inAt + 2]!) + 1;
      inAt += 3;
    } else {
      if (inAt + 2 > input.length) throw new Error('ADC two-byte code truncated');
      length = ((code & 0x3c) >> 2) + 3;
      distance = (((code & 0x03) << 8) | input[inAt + 1]!) + 1;
      inAt += 2;
    }
    if (distance > outAt || outAt + length > outputBytes) throw new Error('ADC back reference out of range');
    // Byte by byte: the source may overlap the destination (run-length style references).
    for (let i = 0; i < length; i++, outAt++) out[outAt] = out[outAt - distance]!;
  }
  if (outAt !== outputBytes) throw new Error(`ADC stream decodes to ${outAt} bytes, not ${outputBytes}`);
  return out;
}
