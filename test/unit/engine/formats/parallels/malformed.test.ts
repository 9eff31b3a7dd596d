// Malformed Parallels images give clear errors (zero or huge clusters, a BAT past EOF, absurd sizes),
// and fast-check mutations of the header and BAT never escape as anything but a VdiskError.

import fc from 'fast-check';
import { describeMalformedImage } from '../../../../helpers/malformed-image.ts';

describeMalformedImage({
  format: 'parallels',
  fileName: 'valid.hds',
  sizeBytes: 1 << 20,
  createOptions: { cluster_size: '4096' },
  write: { offsetBytes: 5000, lengthBytes: 10_000, fill: 3 },
  cases: {
    'refuses zero and huge cluster sizes': [
      [(v) => v.setUint32(28, 0, true), { code: 'VDISK_EFORMAT', offsetBytes: 28 }],
      [(v) => v.setUint32(28, 0x10000000, true), { code: 'VDISK_EFORMAT', offsetBytes: 28 }],
    ],
    'refuses a BAT that extends past the end of the file': [
      [(v) => v.setUint32(32, 0x1000000, true), { code: 'VDISK_EFORMAT', offsetBytes: 32 }],
    ],
    'refuses a size past 2^53 bytes': [
      [(v) => v.setBigUint64(36, 1n << 62n, true), { code: 'VDISK_ECORRUPT' }],
    ],
  },
  fuzz: {
    title: 'never throws anything but a VdiskError on mutated headers and BATs',
    offsets: fc.integer({ min: 16, max: 64 + 4 * 8 }),
  },
});
