// qemu's JSON printer: QDict hash-bucket key order and json-writer's pretty layout and escapes.
// The orders below are what qemu-img 7.2 prints (see test/interop/cli-json-*.test.ts for the live diff).

import { describe, expect, it } from 'vitest';
import { qdictKeyOrder, qemuJson } from '../../../src/cli/qemu-json.ts';

describe('qdictKeyOrder', () => {
  it('orders ImageInfo members as qemu-img info prints them', () => {
    const inserted = [
      'filename',
      'format',
      'dirty-flag',
      'actual-size',
      'virtual-size',
      'cluster-size',
      'backing-filename',
      'full-backing-filename',
      'backing-filename-format',
      'format-specific',
    ];
    expect(qdictKeyOrder(inserted)).toEqual([
      'backing-filename-format',
      'virtual-size',
      'filename',
      'cluster-size',
      'format',
      'actual-size',
      'format-specific',
      'full-backing-filename',
      'backing-filename',
      'dirty-flag',
    ]);
  });

  it('orders qcow2 format-specific and measure members as qemu does', () => {
    expect(
      qdictKeyOrder([
        'compat',
        'lazy-refcounts',
        'corrupt',
        'refcount-bits',
        'extended-l2',
        'compression-type',
      ]),
    ).toEqual(['compat', 'compression-type', 'lazy-refcounts', 'refcount-bits', 'corrupt', 'extended-l2']);
    expect(qdictKeyOrder(['fully-allocated', 'required'])).toEqual(['required', 'fully-allocated']);
  });
});

describe('qemuJson', () => {
  it('pretty-prints with 4-space indents, nested objects and arrays, and leaves out undefined', () => {
    expect(qemuJson({ required: 1, 'fully-allocated': 2, bitmaps: undefined })).toBe(
      '{\n    "required": 1,\n    "fully-allocated": 2\n}',
    );
    expect(qemuJson([{ format: 'raw' }, { format: 'qcow2' }])).toBe(
      '[\n    {\n        "format": "raw"\n    },\n    {\n        "format": "qcow2"\n    }\n]',
    );
    expect(qemuJson({ list: [] })).toBe('{\n    "list": []\n}');
  });

  it('escapes control and non-ASCII characters as \\uXXXX', () => {
    expect(qemuJson('a"b\\c\n\u0001é😀')).toBe('"a\\"b\\\\c\\n\\u0001\\u00e9\\ud83d\\ude00"');
  });
});
