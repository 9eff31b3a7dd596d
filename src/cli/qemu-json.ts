// JSON exactly as qemu-img 7.2 prints it: QObject dictionaries keep their members in hash-bucket
// order (qobject/qdict.c: tdb_hash(key) % 512, newest first within a bucket) and
// qobject/json-writer.c pretty-prints with 4-space indents and escapes non-ASCII as \uXXXX.

/** qdict.c's QDICT_BUCKET_MAX. */
const QDICT_BUCKETS = 512;

/** qdict.c's tdb_hash of the key's UTF-8 bytes (32-bit unsigned arithmetic). */
export function qdictHash(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let index = 0; index < bytes.length; index += 1) {
    value = (value + ((((bytes[index] ?? 0) << ((index * 5) % 24)) >>> 0) >>> 0)) >>> 0;
  }
  return ((Math.imul(1103515243, value) >>> 0) + 12345) >>> 0;
}

/** The keys of an object in the order qemu iterates a QDict built by inserting them in object order. */
export function qdictKeyOrder(keys: readonly string[]): string[] {
  const positioned = keys.map((key, insertion) => ({
    key,
    insertion,
    bucket: qdictHash(key) % QDICT_BUCKETS,
  }));
  positioned.sort((a, b) => a.bucket - b.bucket || b.insertion - a.insertion);
  return positioned.map((entry) => entry.key);
}

function escapeString(text: string): string {
  let out = '"';
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    if (char === '"') out += '\\"';
    else if (char === '\\') out += '\\\\';
    else if (char === '\b') out += '\\b';
    else if (char === '\f') out += '\\f';
    else if (char === '\n') out += '\\n';
    else if (char === '\r') out += '\\r';
    else if (char === '\t') out += '\\t';
    else if (code < 0x20 || code >= 0x7f) {
      if (code > 0xffff) {
        const high = 0xd800 + ((code - 0x10000) >> 10);
        const low = 0xdc00 + ((code - 0x10000) & 0x3ff);
        out += `\\u${high.toString(16).padStart(4, '0')}\\u${low.toString(16).padStart(4, '0')}`;
      } else {
        out += `\\u${code.toString(16).padStart(4, '0')}`;
      }
    } else out += char;
  }
  return `${out}"`;
}

function render(value: unknown, depth: number): string {
  const indent = '    '.repeat(depth);
  const inner = '    '.repeat(depth + 1);
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : String(value);
  if (typeof value === 'string') return escapeString(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((item) => inner + render(item, depth + 1)).join(',\n')}\n${indent}]`;
  }
  const record = value as Record<string, unknown>;
  const keys = qdictKeyOrder(Object.keys(record).filter((key) => record[key] !== undefined));
  if (keys.length === 0) return '{}';
  return `{\n${keys.map((key) => `${inner}${escapeString(key)}: ${render(record[key], depth + 1)}`).join(',\n')}\n${indent}}`;
}

/** Pretty JSON as `qemu-img ... --output=json` prints it (no trailing newline); undefined members are left out. */
export function qemuJson(value: unknown): string {
  return render(value, 0);
}
