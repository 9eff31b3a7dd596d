// Compressed http sources, recognised by their magic bytes (or the URL's suffix): gzip and zstd with
// Node's own zlib, xz with the `xz` tool (Node has no xz codec; xz-utils is in the image) as a
// streaming child process. Each returns a Duplex: compressed bytes in, image bytes out.

import { spawn } from 'node:child_process';
import { Duplex } from 'node:stream';
import { createGunzip, createZstdDecompress } from 'node:zlib';

export type Codec = 'gzip' | 'zstd' | 'xz';

const MAGIC: ReadonlyArray<{ codec: Codec; bytes: readonly number[]; suffix: string }> = [
  { codec: 'gzip', bytes: [0x1f, 0x8b], suffix: '.gz' },
  { codec: 'xz', bytes: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], suffix: '.xz' },
  { codec: 'zstd', bytes: [0x28, 0xb5, 0x2f, 0xfd], suffix: '.zst' },
];

/** The codec of a body whose first bytes are `head`, served at `pathname`; undefined when plain. */
export function detectCodec(head: Uint8Array, pathname: string): Codec | undefined {
  for (const { codec, bytes } of MAGIC) if (bytes.every((byte, index) => head[index] === byte)) return codec;
  return MAGIC.find(({ suffix }) => pathname.endsWith(suffix))?.codec;
}

/** A decompressing stream, and `finished`: resolves once the codec has checked its whole input. */
export interface Decompression {
  stream: Duplex;
  finished: () => Promise<void>;
}

/** A stream that decompresses `codec`. xz errors carry the tool's own message. */
export function decompressor(codec: Codec): Decompression {
  if (codec === 'gzip') return { stream: createGunzip(), finished: async () => undefined };
  if (codec === 'zstd') return { stream: createZstdDecompress(), finished: async () => undefined };
  const child = spawn('xz', ['--decompress', '--stdout', '--quiet'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const stream = Duplex.from({ writable: child.stdin, readable: child.stdout });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    if (stderr.length < 1024) stderr += text;
  });
  // xz checks its CRCs at the end of each block: its exit status, not the end of its output, says
  // whether the stream was whole.
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (err) => reject(new Error(`cannot run xz: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(
          new Error(
            `xz ${code === null ? `killed by ${signal}` : `exited with ${code}`}: ${stderr.trim() || 'not a valid xz stream'}`,
          ),
        );
    });
  });
  exited.catch((err: unknown) => stream.destroy(err as Error));
  // An early end (a size error downstream) must not leave xz running.
  stream.on('close', () => {
    if (child.exitCode === null) child.kill();
  });
  return { stream, finished: () => exited };
}
