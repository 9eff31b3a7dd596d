// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as VHDX checksums use it: MS-VHDX 2.2.2
// ("Checksum": CRC-32C over the structure with its checksum field zeroed), table-driven.

const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let crc = n;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
    table[n] = crc >>> 0;
  }
  return table;
})();

/** CRC-32C of `bytes`, with the field at [zeroAt, zeroAt+4) read as zeros (the checksum field itself). */
export function crc32c(bytes: Uint8Array, zeroAt = -1): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) {
    const byte = i >= zeroAt && i < zeroAt + 4 ? 0 : bytes[i]!;
    crc = TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}
