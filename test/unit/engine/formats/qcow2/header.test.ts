// qcow2 header parsing and serialization: round trips of v2/v3 headers with extensions, the exact
// bytes qemu writes, and every malformed-header case raising ImageFormatError with the field's offset.

import { describe, expect, it } from 'vitest';
import {
  describeUnknownFeatures,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  encodeFeatureTable,
  parseHeader,
  probeQcow2,
  QEMU_FEATURE_NAMES,
  type Qcow2Header,
  serializeHeader,
} from '../../../../../src/engine/formats/qcow2/header.ts';

function baseHeader(overrides: Partial<Qcow2Header> = {}): Qcow2Header {
  return {
    version: 3,
    backingFileOffsetBytes: 0,
    backingFileSizeBytes: 0,
    clusterBits: 16,
    virtualSizeBytes: 1 << 30,
    cryptMethod: 0,
    l1EntryCount: 2,
    l1TableOffsetBytes: 3 << 16,
    refcountTableOffsetBytes: 1 << 16,
    refcountTableClusters: 1,
    snapshotCount: 0,
    snapshotsOffsetBytes: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 1n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLengthBytes: 112,
    compressionType: 0,
    extensions: [],
    featureNames: [],
    ...overrides,
  };
}

function expectFormatError(bytes: Buffer, offsetBytes: number): void {
  let caught: unknown;
  try {
    parseHeader(bytes, 'bad.qcow2');
  } catch (err) {
    caught = err;
  }
  expect(caught).toMatchObject({ code: 'VDISK_EFORMAT', file: 'bad.qcow2', offsetBytes });
}

describe('qcow2 header', () => {
  it('round-trips a v3 header with backing format, feature table, an unknown extension and a backing name', () => {
    const unknown = { type: 0x12345678, data: Buffer.from('opaque payload, 27 bytes!!!') };
    const header = baseHeader({
      extensions: [
        { type: EXT_BACKING_FORMAT, data: Buffer.from('qcow2') },
        { type: EXT_FEATURE_TABLE, data: encodeFeatureTable(QEMU_FEATURE_NAMES) },
        unknown,
      ],
      backingFileName: 'base image.qcow2',
      backingFormat: 'qcow2',
    });
    const bytes = serializeHeader(header);
    expect(bytes.length).toBe(65536);
    const parsed = parseHeader(bytes, 'x.qcow2');
    expect(parsed.backingFileName).toBe('base image.qcow2');
    expect(parsed.backingFormat).toBe('qcow2');
    expect(parsed.featureNames).toEqual(QEMU_FEATURE_NAMES);
    expect(parsed.extensions.map((extension) => extension.type)).toEqual([
      EXT_BACKING_FORMAT,
      EXT_FEATURE_TABLE,
      unknown.type,
    ]);
    expect(parsed.extensions[2]?.data.equals(unknown.data)).toBe(true);
    expect(parsed.compatibleFeatures).toBe(1n);
    // Serializing the parsed record again gives the same bytes: nothing is lost.
    expect(serializeHeader(parsed).equals(bytes)).toBe(true);
  });

  it('round-trips a v2 header (72 bytes, refcount order fixed at 4)', () => {
    const header = baseHeader({
      version: 2,
      headerLengthBytes: 72,
      compatibleFeatures: 0n,
      backingFileName: 'b',
    });
    const parsed = parseHeader(serializeHeader(header), 'v2.qcow2');
    expect(parsed).toMatchObject({
      version: 2,
      refcountOrder: 4,
      headerLengthBytes: 72,
      backingFileName: 'b',
      backingFileOffsetBytes: 80,
    });
  });

  it('places the backing name right after the end marker, as qemu does', () => {
    const bytes = serializeHeader(
      baseHeader({
        extensions: [{ type: EXT_BACKING_FORMAT, data: Buffer.from('qcow2') }],
        backingFileName: 'base.qcow2',
      }),
    );
    // 112-byte header + 16-byte extension + 8-byte end marker
    expect(bytes.readBigUInt64BE(8)).toBe(136n);
    expect(bytes.readUInt32BE(16)).toBe(10);
  });

  it('names unknown feature bits from the image feature table', () => {
    const header = baseHeader({ featureNames: [{ kind: 'incompatible', bit: 9, name: 'future thing' }] });
    expect(describeUnknownFeatures(header, 'incompatible', (1n << 9n) | (1n << 40n) | 1n, 1n)).toEqual([
      'bit 9 (future thing)',
      'bit 40',
    ]);
  });

  it('probes the magic with versions 2 and 3 only', () => {
    const bytes = serializeHeader(baseHeader());
    expect(probeQcow2(bytes.subarray(0, 512))).toBe(100);
    bytes.writeUInt32BE(4, 4);
    expect(probeQcow2(bytes)).toBe(0);
    expect(probeQcow2(new Uint8Array(4))).toBe(0);
  });

  it('rejects a truncated header', () => expectFormatError(serializeHeader(baseHeader()).subarray(0, 50), 0));
  it('rejects a bad magic', () => {
    const bytes = serializeHeader(baseHeader());
    bytes[0] = 0;
    expectFormatError(bytes, 0);
  });
  it('rejects an unknown version', () => {
    const bytes = serializeHeader(baseHeader());
    bytes.writeUInt32BE(4, 4);
    expectFormatError(bytes, 4);
  });
  for (const clusterBits of [0, 8, 22, 63]) {
    it(`rejects cluster_bits ${clusterBits}`, () => {
      const bytes = serializeHeader(baseHeader());
      bytes.writeUInt32BE(clusterBits, 20);
      expectFormatError(bytes, 20);
    });
  }
  it('rejects refcount_order 7', () => {
    const bytes = serializeHeader(baseHeader());
    bytes.writeUInt32BE(7, 96);
    expectFormatError(bytes, 96);
  });
  it('rejects header_length past the cluster or unaligned', () => {
    const bytes = serializeHeader(baseHeader());
    bytes.writeUInt32BE(70000, 100);
    expectFormatError(bytes, 100);
    bytes.writeUInt32BE(106, 100);
    expectFormatError(bytes, 100);
  });
  it('rejects a 64-bit field beyond 2^53', () => {
    const bytes = serializeHeader(baseHeader());
    bytes.writeBigUInt64BE(1n << 60n, 24);
    expectFormatError(bytes, 24);
  });
  it('rejects an extension longer than the header cluster', () => {
    const bytes = serializeHeader(baseHeader({ extensions: [{ type: 0x1234, data: Buffer.alloc(8) }] }));
    bytes.writeUInt32BE(0xffffffff, 116);
    expectFormatError(bytes, 112);
  });
  it('rejects a backing name that runs past the header cluster', () => {
    const bytes = serializeHeader(baseHeader());
    bytes.writeBigUInt64BE(65000n, 8);
    bytes.writeUInt32BE(1000, 16);
    expectFormatError(bytes, 8);
  });
  it('refuses to serialize a header whose extensions do not fit', () => {
    expect(() =>
      serializeHeader(baseHeader({ clusterBits: 9, extensions: [{ type: 1, data: Buffer.alloc(400) }] })),
    ).toThrow(expect.objectContaining({ code: 'VDISK_EFORMAT' }));
  });
});
