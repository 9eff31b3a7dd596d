// Malformed qcow (v1) images give clear errors (bad cluster/L2 bits, an unknown crypt_method, an L1 past EOF,
// entries past EOF), and fast-check mutations never escape as anything but a VdiskError.

import fc from 'fast-check';
import { describeMalformedImage } from '../../../../helpers/malformed-image.ts';

describeMalformedImage({
  format: 'qcow',
  fileName: 'valid.qcow',
  sizeBytes: 4 << 20,
  write: { offsetBytes: 3000, lengthBytes: 9000, fill: 5 },
  cases: {
    'refuses cluster and L2 sizes out of range': [
      [(v) => v.setUint8(32, 30), { code: 'VDISK_EFORMAT', offsetBytes: 32 }],
      [(v) => v.setUint8(33, 2), { code: 'VDISK_EFORMAT', offsetBytes: 33 }],
    ],
    // crypt_method 1 (AES) opens since issue 4 (test/interop/qcow-aes.test.ts); nothing else exists.
    'refuses an unknown crypt_method': [
      [(v) => v.setUint32(36, 2, false), { code: 'VDISK_EFORMAT', offsetBytes: 36 }],
    ],
    'refuses an L1 table past the end of the file without allocating it': [
      [(v) => v.setBigUint64(24, 1n << 45n, false), { code: 'VDISK_EFORMAT', offsetBytes: 40 }],
    ],
    'names an L1 entry pointing past EOF': [
      [(v) => v.setBigUint64(48, 1n << 40n, false), { code: 'VDISK_ECORRUPT', offsetBytes: 48 }],
    ],
  },
  fuzz: {
    title: 'never throws anything but a VdiskError on mutated headers and tables',
    offsets: fc.integer({ min: 4, max: 48 + 64 }),
  },
});
