// Malformed QED images give clear errors with offsets (bad geometry, unknown features, L1 past EOF,
// L2 entries past EOF), and fast-check header mutations never escape as anything but a VdiskError.

import fc from 'fast-check';
import { describeMalformedImage } from '../../../../helpers/malformed-image.ts';

describeMalformedImage({
  format: 'qed',
  fileName: 'valid.qed',
  sizeBytes: 4 << 20,
  createOptions: { cluster_size: '4096', table_size: '2' },
  write: { offsetBytes: 0, lengthBytes: 10_000, fill: 3 },
  cases: {
    'refuses cluster sizes that are not powers of two in range': [
      [(v) => v.setUint32(4, 3000, true), { code: 'VDISK_EFORMAT', offsetBytes: 4 }],
      [(v) => v.setUint32(4, 1 << 30, true), { code: 'VDISK_EFORMAT', offsetBytes: 4 }],
    ],
    'refuses unknown feature bits': [[(v) => v.setUint32(16, 0x80, true), { code: 'VDISK_ENOTSUP' }]],
    'refuses an L1 table past the end of the file': [
      [(v) => v.setBigUint64(40, 1n << 30n, true), { code: 'VDISK_ECORRUPT', offsetBytes: 1 << 30 }],
    ],
    'refuses an absurd image size': [
      [(v) => v.setBigUint64(48, 1n << 52n, true), { code: 'VDISK_EFORMAT', offsetBytes: 48 }],
    ],
    'names an L1 entry that points past EOF': [
      [(v) => v.setBigUint64(4096, 1n << 40n, true), { code: 'VDISK_ECORRUPT', offsetBytes: 4096 }],
    ],
  },
  fuzz: {
    title: 'never throws anything but a VdiskError on mutated headers and tables',
    offsets: fc.oneof(
      fc.integer({ min: 0, max: 63 }),
      fc.integer({ min: 4096, max: 4200 }),
      fc.integer({ min: 12288, max: 12400 }),
    ),
  },
});
