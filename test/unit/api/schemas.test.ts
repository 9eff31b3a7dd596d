// The zod schemas accept the samples' shapes, apply defaults, reject bad input, and produce
// structural OpenAPI (every string bounded, no constructs apiextensions refuses).
import { describe, expect, it } from 'vitest';
import { diskSnapshotCrd, virtualDiskCrd } from '../../../src/api/crd.ts';
import { diskSnapshotSpecSchema } from '../../../src/api/disk-snapshot.ts';
import { formatQuantityBytes, parseQuantityBytes } from '../../../src/api/quantity.ts';
import { virtualDiskSpecSchema } from '../../../src/api/virtual-disk.ts';

type Node = Record<string, unknown>;

function walk(node: unknown, path: string, visit: (node: Node, path: string) => void): void {
  if (node === null || typeof node !== 'object') return;
  if (Array.isArray(node)) return;
  const schema = node as Node;
  visit(schema, path);
  for (const [name, child] of Object.entries((schema.properties as Node | undefined) ?? {}))
    walk(child, `${path}.${name}`, visit);
  if (schema.items) walk(schema.items, `${path}[]`, visit);
  if (typeof schema.additionalProperties === 'object') walk(schema.additionalProperties, `${path}{}`, visit);
}

describe('VirtualDisk spec schema', () => {
  it('defaults format to qcow2 and deletionPolicy to Delete', () => {
    const spec = virtualDiskSpecSchema.parse({ size: '1Gi', source: { blank: {} } });
    expect(spec.format).toBe('qcow2');
    expect(spec.deletionPolicy).toBe('Delete');
  });

  it.each([
    ['a size that is not a quantity', { size: 'ten gigs', source: { blank: {} } }],
    ['an unknown format', { size: '1Gi', format: 'iso', source: { blank: {} } }],
    ['an http URL with another scheme', { size: '1Gi', source: { http: { url: 'ftp://x/y' } } }],
    [
      'an upper-case sha256',
      { size: '1Gi', source: { http: { url: 'http://x/y', sha256: 'A'.repeat(64) } } },
    ],
    ['a clone of an invalid name', { size: '1Gi', source: { virtualDisk: { name: 'Bad_Name' } } }],
  ])('rejects %s', (_label, input) => {
    expect(virtualDiskSpecSchema.safeParse(input).success).toBe(false);
  });

  it('defaults a DiskSnapshot to internal mode', () => {
    expect(diskSnapshotSpecSchema.parse({ virtualDiskName: 'disk' }).mode).toBe('internal');
  });
});

describe('CRD OpenAPI schemas', () => {
  for (const crd of [virtualDiskCrd(), diskSnapshotCrd()]) {
    const name = (crd.metadata as Node).name as string;
    const version = ((crd.spec as Node).versions as Node[])[0] as Node;
    const root = (version.schema as Node).openAPIV3Schema as Node;

    it(`${name}: every node has a type and every string a maxLength or enum`, () => {
      const problems: string[] = [];
      walk(root, '', (node, path) => {
        if (!node.type && !node['x-kubernetes-int-or-string']) problems.push(`${path}: no type`);
        if (node.type === 'string' && node.maxLength === undefined && !node.enum && path.includes('.spec'))
          problems.push(`${path}: unbounded string`);
        for (const banned of ['$schema', 'anyOf', 'oneOf', 'allOf', '$ref', 'nullable']) {
          if (banned in node) problems.push(`${path}: ${banned}`);
        }
        if (node.properties && node.additionalProperties !== undefined)
          problems.push(`${path}: properties with additionalProperties`);
      });
      expect(problems).toEqual([]);
    });

    it(`${name}: has the status subresource and a creation-time printer column`, () => {
      expect(version.subresources).toEqual({ status: {} });
      expect((version.additionalPrinterColumns as Node[]).some((column) => column.name === 'Age')).toBe(true);
    });
  }
});

describe('quantities', () => {
  it.each([
    ['10Gi', 10 * 2 ** 30],
    ['512Mi', 512 * 2 ** 20],
    ['1G', 1e9],
    ['1.5Gi', 1.5 * 2 ** 30],
    ['4096', 4096],
    ['1e3', 1000],
  ])('parses %s', (text, bytes) => {
    expect(parseQuantityBytes(text)).toBe(bytes);
  });

  it.each(['', '-1Gi', '10GB', '1m', 'Gi'])('refuses %j', (text) => {
    expect(parseQuantityBytes(text)).toBeUndefined();
  });

  it('formats bytes with the largest exact binary suffix', () => {
    expect(formatQuantityBytes(10 * 2 ** 30)).toBe('10Gi');
    expect(formatQuantityBytes(1536 * 2 ** 20)).toBe('1536Mi');
    expect(formatQuantityBytes(1000)).toBe('1000');
  });
});
