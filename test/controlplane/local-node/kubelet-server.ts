// The slice of the kubelet's HTTPS API the apiserver proxies for `kubectl logs`:
// GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&limitBytes, served from the
// container log files of the local node (127.0.0.1 only, self-signed certificate, no authentication).
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { ServerResponse } from 'node:http';

/** Where a container's log is and whether the container may still write to it. */
export interface ContainerLogSource {
  path: string;
  isRunning(): boolean;
}

/** Finds the log of a container; undefined when the pod or container is unknown. */
export type LogLookup = (
  namespace: string,
  podName: string,
  container: string,
) => ContainerLogSource | undefined;

/** Longest tail served, in bytes: keeps tailLines bounded whatever the file size. */
const MAX_TAIL_BYTES = 4 * 1024 * 1024;
const FOLLOW_POLL_MS = 200;

async function readRange(path: string, startBytes: number, endBytes: number): Promise<Buffer> {
  if (endBytes <= startBytes) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of createReadStream(path, { start: startBytes, end: endBytes - 1 }))
    chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/** Offset where the last `lineCount` lines start (bounded by MAX_TAIL_BYTES). */
async function tailOffset(path: string, sizeBytes: number, lineCount: number): Promise<number> {
  const startBytes = Math.max(0, sizeBytes - MAX_TAIL_BYTES);
  const text = await readRange(path, startBytes, sizeBytes);
  let newlines = 0;
  for (let index = text.length - 1; index >= 0; index--) {
    if (text[index] === 0x0a && index !== text.length - 1) {
      newlines++;
      if (newlines === lineCount) return startBytes + index + 1;
    }
  }
  return startBytes;
}

async function serveLog(
  response: ServerResponse,
  source: ContainerLogSource,
  query: URLSearchParams,
): Promise<void> {
  const follow = query.get('follow') === 'true';
  const tailLines = query.has('tailLines') ? Math.max(0, Number(query.get('tailLines'))) : undefined;
  let remainingBytes = query.has('limitBytes')
    ? Math.max(0, Number(query.get('limitBytes')))
    : Number.POSITIVE_INFINITY;
  let offsetBytes = 0;
  const sizeBytes = await sizeOf(source.path);
  if (tailLines !== undefined)
    offsetBytes = tailLines === 0 ? sizeBytes : await tailOffset(source.path, sizeBytes, tailLines);
  response.writeHead(200, { 'Content-Type': 'text/plain' });
  let closed = false;
  response.on('close', () => {
    closed = true;
  });
  for (;;) {
    const end = await sizeOf(source.path);
    const chunk = await readRange(source.path, offsetBytes, Math.min(end, offsetBytes + remainingBytes));
    if (chunk.length > 0) {
      response.write(chunk);
      offsetBytes += chunk.length;
      remainingBytes -= chunk.length;
    }
    if (
      !follow ||
      closed ||
      remainingBytes <= 0 ||
      (!source.isRunning() && offsetBytes >= (await sizeOf(source.path)))
    )
      break;
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
  }
  response.end();
}

/** Starts the server on a free 127.0.0.1 port; resolves with the server and its port. */
export async function startKubeletServer(
  tls: { cert: Buffer; key: Buffer },
  lookup: LogLookup,
): Promise<{ server: Server; port: number }> {
  const server = createServer({ cert: tls.cert, key: tls.key }, (request, response) => {
    const url = new URL(request.url ?? '/', 'https://localhost');
    const match = /^\/containerLogs\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(url.pathname);
    const source =
      match === null
        ? undefined
        : lookup(
            decodeURIComponent(match[1] ?? ''),
            decodeURIComponent(match[2] ?? ''),
            decodeURIComponent(match[3] ?? ''),
          );
    if (request.method !== 'GET' || source === undefined) {
      response.writeHead(404, { 'Content-Type': 'text/plain' });
      response.end(`the vdisk local node serves only /containerLogs of its own pods (got ${url.pathname})\n`);
      return;
    }
    serveLog(response, source, url.searchParams).catch((err) => response.destroy(err as Error));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  const port = address !== null && typeof address === 'object' ? address.port : 0;
  return { server, port };
}
