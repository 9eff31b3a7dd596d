// Import from http(s): stream the body once, hashing the bytes as downloaded (SHA-256, compared with
// spec.source.http.sha256), decompressing gzip, xz and zstd bodies on the fly (decompress.ts). A raw
// source is written straight into the target image as it arrives (1 MiB buffer, all-zero blocks skipped, so memory is
// bounded and the PVC needs no room for a copy); a qcow2 source too, through the engine's streaming qcow2
// reader (only what arrives before its metadata is kept, in the temp path); other formats land in a sparse
// temp file on the PVC and are converted by the engine. The target is published only after the checksum matched.

import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { BlockDevice } from '../../engine/block-device.ts';
import { convertImage } from '../../engine/commands/convert-image.ts';
import { createImage } from '../../engine/commands/create.ts';
import { ImageIoError, InvalidOptionError, UnsupportedError } from '../../engine/errors.ts';
import { findDriver, probeDriver } from '../../engine/formats/registry.ts';
import { ByteSource } from '../../engine/io/byte-stream.ts';
import { NodeHostFile } from '../../engine/io/host-file.ts';
import { openImage, PROBE_BYTES } from '../../engine/open.ts';
import { decompressor, detectCodec } from './decompress.ts';
import { type ProgressSink, stage } from './progress.ts';

const CHUNK_BYTES = 1024 * 1024;
/** No byte for this long aborts the download (a stalled server must not hang the Job forever). */
const STALL_TIMEOUT_MS = 60_000;
const MAX_HEADER_LINES = 64;

export interface HttpImportRequest {
  url: string;
  /** Expected lower-case hex SHA-256 of the downloaded bytes. */
  sha256?: string;
  /** Format of the (decompressed) source; probed when absent. */
  sourceFormat?: string;
  /** Host path of a `Name: value` per line file. */
  headersFile?: string;
  /** Target image (host path, not yet existing) and how to create it. */
  targetPath: string;
  targetFormat: string;
  targetSizeBytes: number;
  targetOptions: Record<string, string>;
  /** Host path for a non-raw source's temporary copy. */
  tempPath: string;
  /** Told the operation's progress in percent (download, then conversion for non-raw sources). */
  onProgress?: ProgressSink;
}

export interface HttpImportResult {
  sha256: string;
  downloadedBytes: number;
  sourceFormat: string;
  sourceSizeBytes: number;
}

async function readHeaders(path: string | undefined): Promise<Record<string, string>> {
  if (!path) return {};
  const text = await readFile(path, 'utf8');
  const headers: Record<string, string> = {};
  for (const line of text.split('\n').slice(0, MAX_HEADER_LINES)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  return headers;
}

function isAllZero(buffer: Uint8Array): boolean {
  for (let index = 0; index < buffer.length; index++) if (buffer[index] !== 0) return false;
  return true;
}

/** Yields the body in order, gunzipped when it is gzip, hashing the downloaded (compressed) bytes. */
async function* download(
  request: HttpImportRequest,
  hash: ReturnType<typeof createHash>,
  counter: { bytes: number },
  onDownloaded?: (fraction: number) => void,
): AsyncGenerator<Buffer> {
  const abort = new AbortController();
  let stallTimer = setTimeout(() => abort.abort(), STALL_TIMEOUT_MS);
  const touch = () => {
    clearTimeout(stallTimer);
    stallTimer = setTimeout(() => abort.abort(), STALL_TIMEOUT_MS);
  };
  try {
    let response: Response;
    try {
      response = await fetch(request.url, {
        headers: await readHeaders(request.headersFile),
        signal: abort.signal,
        redirect: 'follow',
      });
    } catch (err) {
      throw new ImageIoError({
        file: request.url,
        message: `download failed: ${(err as Error).message}`,
        cause: err,
      });
    }
    if (!response.ok || !response.body) {
      const message = `HTTP ${response.status} ${response.statusText} from ${request.url}`;
      // 4xx will not change on retry; 5xx may.
      if (response.status >= 400 && response.status < 500)
        throw new InvalidOptionError({ option: 'url', value: request.url, message });
      throw new ImageIoError({ file: request.url, message });
    }
    // Content-Length counts the bytes on the wire (compressed for .gz), which is what is hashed.
    const lengthBytes = Number(response.headers.get('content-length') ?? Number.NaN);
    const knownLength = Number.isSafeInteger(lengthBytes) && lengthBytes > 0 ? lengthBytes : undefined;
    const body = Readable.fromWeb(response.body as import('node:stream/web').ReadableStream<Uint8Array>);
    const hashed = (async function* () {
      for await (const chunk of body) {
        touch();
        hash.update(chunk as Buffer);
        counter.bytes += (chunk as Buffer).length;
        if (knownLength !== undefined) onDownloaded?.(counter.bytes / knownLength);
        yield chunk as Buffer;
      }
    })();
    const first = await hashed.next();
    if (first.done) return;
    const codec = detectCodec(first.value, new URL(request.url).pathname);
    if (!codec) {
      yield first.value;
      yield* hashed;
      return;
    }
    const { stream: inflate, finished } = decompressor(codec);
    const compressed = Readable.from(
      (async function* () {
        yield first.value;
        yield* hashed;
      })(),
    );
    compressed.on('error', (err) => inflate.destroy(err));
    compressed.pipe(inflate);
    try {
      for await (const chunk of inflate) yield chunk as Buffer;
      await finished();
    } catch (err) {
      if (err instanceof ImageIoError || err instanceof InvalidOptionError) throw err;
      throw new InvalidOptionError({
        option: 'url',
        value: request.url,
        message: `${request.url}: not a valid ${codec} stream (${(err as Error).message})`,
        cause: err,
      });
    } finally {
      inflate.destroy();
    }
  } catch (err) {
    if (abort.signal.aborted)
      throw new ImageIoError({
        file: request.url,
        message: `download stalled for ${STALL_TIMEOUT_MS / 1000} s`,
        cause: err,
      });
    throw err;
  } finally {
    clearTimeout(stallTimer);
  }
}

/** Writes a stream into `device` from offset 0 in 1 MiB blocks, skipping all-zero ones; returns the length. */
async function streamInto(
  device: BlockDevice,
  chunks: AsyncIterable<Buffer>,
  first: Buffer,
  limitBytes: number,
  what: string,
): Promise<number> {
  const block = Buffer.alloc(CHUNK_BYTES);
  let filled = 0;
  let offsetBytes = 0;
  const flushBlock = async (lengthBytes: number) => {
    const padded = Math.min(Math.ceil(lengthBytes / 512) * 512, device.sizeBytes - offsetBytes);
    if (padded <= 0 && lengthBytes > 0)
      throw new InvalidOptionError({
        option: 'size',
        message: `${what} is larger than the disk size of ${limitBytes} bytes`,
      });
    if (lengthBytes < padded) block.fill(0, lengthBytes, padded);
    const data = block.subarray(0, padded);
    if (!isAllZero(data)) await device.write(offsetBytes, data);
    offsetBytes += lengthBytes;
    filled = 0;
  };
  const feed = async (chunk: Buffer) => {
    let position = 0;
    while (position < chunk.length) {
      const count = Math.min(chunk.length - position, CHUNK_BYTES - filled);
      chunk.copy(block, filled, position, position + count);
      filled += count;
      position += count;
      if (offsetBytes + filled > limitBytes) {
        throw new InvalidOptionError({
          option: 'size',
          message: `${what} is larger than the disk size of ${limitBytes} bytes: grow spec.size`,
        });
      }
      if (filled === CHUNK_BYTES) await flushBlock(CHUNK_BYTES);
    }
  };
  await feed(first);
  for await (const chunk of chunks) await feed(chunk);
  if (filled > 0) await flushBlock(filled);
  return offsetBytes;
}

/** Collects at least PROBE_BYTES (or the whole body if shorter) for the format probe. */
async function readHead(iterator: AsyncIterator<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  let length = 0;
  while (length < PROBE_BYTES) {
    const next = await iterator.next();
    if (next.done) break;
    parts.push(next.value);
    length += next.value.length;
  }
  return Buffer.concat(parts);
}

/**
 * A qcow2 body is converted as it arrives (the engine's streaming qcow2 reader): only parts that come
 * before the metadata naming them are kept, in the temp path, so the PVC needs no room for a full copy.
 * Returns the verified sha256 and the guest size; the caller removes the target on failure.
 */
async function importQcow2Stream(
  request: HttpImportRequest,
  head: Buffer,
  rest: AsyncIterable<Buffer>,
  verify: () => string,
): Promise<{ sha256: string; sizeBytes: number }> {
  const readStream = findDriver('qcow2').readStream;
  if (!readStream) throw new UnsupportedError({ format: 'qcow2', feature: 'stream input' });
  const input = new ByteSource(
    (async function* () {
      yield head;
      yield* rest;
    })(),
    request.url,
  );
  const streamed = await readStream(input);
  const sizeBytes = streamed.sizeBytes ?? 0;
  if (sizeBytes > request.targetSizeBytes) {
    throw new InvalidOptionError({
      option: 'size',
      message: `the qcow2 image at ${request.url} is ${sizeBytes} bytes, larger than the disk size of ${request.targetSizeBytes} bytes: grow spec.size`,
    });
  }
  await createImage({
    path: request.targetPath,
    format: request.targetFormat,
    sizeBytes,
    options: request.targetOptions,
  });
  const target = await openImage(request.targetPath, { format: request.targetFormat });
  try {
    await streamed.copyInto(target, { spillPath: request.tempPath });
    const sha256 = verify();
    await target.flush();
    return { sha256, sizeBytes };
  } finally {
    await target.close();
  }
}

/** Downloads, verifies and converts; the target exists only if this resolves. Throws VdiskErrors. */
export async function importFromHttp(request: HttpImportRequest): Promise<HttpImportResult> {
  const hash = createHash('sha256');
  const counter = { bytes: 0 };
  // A raw source is written as it downloads; any other is downloaded (first half), then converted.
  const sink = request.onProgress ?? (() => undefined);
  // Decided once the head is probed (the head is a few KiB; its share is reported with the next chunk).
  let downloadStage: (fraction: number) => void = () => undefined;
  const iterator = download(request, hash, counter, (fraction) => downloadStage(fraction))[
    Symbol.asyncIterator
  ]();
  const rest: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => iterator };
  const head = await readHead(iterator);
  const sourceFormat =
    request.sourceFormat ?? probeDriver(head, new URL(request.url).pathname)?.name ?? 'raw';
  // raw and qcow2 convert as they download; other formats land in the temp file first.
  const convertsWhileDownloading = sourceFormat === 'raw' || sourceFormat === 'qcow2';
  downloadStage = convertsWhileDownloading ? stage(sink, 0, 100) : stage(sink, 0, 50);
  let sourceSizeBytes: number;
  const verify = () => {
    const actual = hash.digest('hex');
    if (request.sha256 && actual !== request.sha256) {
      throw new InvalidOptionError({
        option: 'sha256',
        value: actual,
        message: `checksum mismatch for ${request.url}: expected sha256 ${request.sha256}, got ${actual}`,
      });
    }
    return actual;
  };
  let sha256: string;
  try {
    if (sourceFormat === 'raw') {
      await createImage({
        path: request.targetPath,
        format: request.targetFormat,
        sizeBytes: request.targetSizeBytes,
        options: request.targetOptions,
      });
      const target = await openImage(request.targetPath, { format: request.targetFormat });
      try {
        sourceSizeBytes = await streamInto(
          target,
          rest,
          head,
          request.targetSizeBytes,
          `the image at ${request.url}`,
        );
        sha256 = verify();
        await target.flush();
      } finally {
        await target.close();
      }
    } else if (sourceFormat === 'qcow2') {
      ({ sha256, sizeBytes: sourceSizeBytes } = await importQcow2Stream(request, head, rest, verify));
    } else {
      const temp = await NodeHostFile.open(request.tempPath, {
        readOnly: false,
        create: true,
        truncate: true,
      });
      const tempDevice = {
        sizeBytes: Number.MAX_SAFE_INTEGER,
        write: async (offsetBytes: number, data: Uint8Array) => temp.write(offsetBytes, data),
      } as unknown as BlockDevice;
      try {
        const length = await streamInto(
          tempDevice,
          rest,
          head,
          Number.MAX_SAFE_INTEGER - CHUNK_BYTES,
          `the image at ${request.url}`,
        );
        await temp.truncate(length);
        await temp.sync();
      } finally {
        await temp.close();
      }
      sha256 = verify();
      const source = await openImage(request.tempPath, {
        format: sourceFormat,
        readOnly: true,
        noBacking: true,
      });
      sourceSizeBytes = source.sizeBytes;
      await source.close();
      if (sourceSizeBytes > request.targetSizeBytes) {
        throw new InvalidOptionError({
          option: 'size',
          message: `the ${sourceFormat} image at ${request.url} is ${sourceSizeBytes} bytes, larger than the disk size of ${request.targetSizeBytes} bytes: grow spec.size`,
        });
      }
      const convertStage = stage(sink, 50, 100);
      await convertImage({
        sourcePath: request.tempPath,
        sourceFormat,
        targetPath: request.targetPath,
        targetFormat: request.targetFormat,
        options: request.targetOptions,
        onProgress: (doneBytes, totalBytes) => convertStage(totalBytes > 0 ? doneBytes / totalBytes : 1),
      });
    }
    sink(100);
  } catch (err) {
    await rm(request.targetPath, { force: true });
    throw err;
  } finally {
    await rm(request.tempPath, { force: true });
  }
  return { sha256, downloadedBytes: counter.bytes, sourceFormat, sourceSizeBytes };
}
