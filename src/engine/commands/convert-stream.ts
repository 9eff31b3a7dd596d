// convert to or from a pipe (`vdisk convert -O qcow2 in -`, `... | vdisk convert -f qcow2 - out`):
// qemu-img has no such mode. The format's driver does the format work (writeStream / readStream);
// this file opens the source or creates the target around it, as convert-image.ts does for files.
// Memory stays bounded whatever the image size; what a streamed reader cannot place yet goes to a
// sparse spill file beside the target (deleted at the end), never to memory.

import { basename, dirname, join } from 'node:path';
import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import type { StreamCopyResult, StreamWriteResult } from '../formats/driver.ts';
import { findDriver, probeDriver } from '../formats/registry.ts';
import type { ByteSink, ByteSource } from '../io/byte-stream.ts';
import { NodeHostFile } from '../io/host-file.ts';
import { openImage, PROBE_BYTES } from '../open.ts';
import { ConcatDevice } from './concat-device.ts';
import { createImage } from './create.ts';
import { DEFAULT_MIN_SPARSE_BYTES } from './convert.ts';

/** How much the copy writes into the target between starts of writeback (as convert-image.ts). */
const TARGET_WRITEBACK_BYTES = 16 * 1024 * 1024;
/** A target whose size the stream does not say (raw) starts this big and grows as data arrives. */
const UNKNOWN_SIZE_START_BYTES = 1024 * 1024 * 1024;

export interface ConvertToStreamRequest {
  sourcePath: string;
  moreSourcePaths?: readonly string[];
  sourceFormat?: string;
  sourceSnapshot?: string;
  /** `-O`; raw when absent. */
  targetFormat?: string;
  options?: Record<string, string>;
  /** `-S`; 0 keeps every allocated cluster. */
  minSparseBytes?: number;
  sink: ByteSink;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  allowBackingEscape?: boolean;
}

/** Writes the source as an image of `targetFormat` to the sink, in file order. Throws VdiskErrors. */
export async function convertToStream(request: ConvertToStreamRequest): Promise<StreamWriteResult> {
  const driver = findDriver(request.targetFormat ?? 'raw');
  if (!driver.writeStream)
    throw new UnsupportedError({
      format: driver.name,
      feature: 'stream output',
      message: `Format '${driver.name}' cannot be written to a stream (qcow2 and raw can)`,
    });
  const allowBackingEscape = request.allowBackingEscape ?? false;
  const opened: BlockDevice[] = [];
  try {
    for (const path of [request.sourcePath, ...(request.moreSourcePaths ?? [])])
      opened.push(
        await openImage(path, { format: request.sourceFormat, readOnly: true, allowBackingEscape }),
      );
    let source: BlockDevice = opened.length > 1 ? new ConcatDevice(opened) : (opened[0] as BlockDevice);
    if (request.sourceSnapshot !== undefined) {
      if (!source.snapshots)
        throw new UnsupportedError({
          format: source.formatName,
          feature: 'snapshots',
          message: `${request.sourcePath}: the format has no internal snapshots`,
        });
      source = await source.snapshots.open(request.sourceSnapshot);
      opened.push(source);
    }
    const result = await driver.writeStream(source, request.sink, {
      options: request.options ?? {},
      minSparseBytes: request.minSparseBytes ?? DEFAULT_MIN_SPARSE_BYTES,
      onProgress: request.onProgress,
    });
    return result;
  } finally {
    for (const device of opened.reverse()) await device.close().catch(() => undefined);
  }
}

export interface ConvertFromStreamRequest {
  input: ByteSource;
  /** `-f`; probed from the stream's first bytes when absent. */
  sourceFormat?: string;
  targetPath: string;
  /** `-O`; raw when absent. */
  targetFormat?: string;
  options?: Record<string, string>;
  targetCache?: string;
  onProgress?: (doneBytes: number) => void;
}

/** The spill file's path: hidden, beside the target, so it lands on the same volume. */
export function spillPathFor(targetPath: string): string {
  return join(dirname(targetPath), `.${basename(targetPath)}.vdisk-spill-${process.pid}`);
}

/** Reads an image from the stream into a new target image. Throws VdiskErrors; a partial target stays on failure. */
export async function convertFromStream(request: ConvertFromStreamRequest): Promise<StreamCopyResult> {
  const targetFormat = request.targetFormat ?? 'raw';
  const formatName =
    request.sourceFormat ??
    probeDriver(await request.input.peek(PROBE_BYTES), request.input.name)?.name ??
    'raw';
  const driver = findDriver(formatName);
  if (!driver.readStream)
    throw new UnsupportedError({
      format: driver.name,
      feature: 'stream input',
      message: `Format '${driver.name}' cannot be read from a stream (qcow2 and raw can)`,
    });
  const streamed = await driver.readStream(request.input);
  const targetDriver = findDriver(targetFormat);
  if (streamed.sizeBytes === undefined && targetDriver.capabilities.resize === 'none')
    throw new InvalidOptionError({
      option: 'O',
      value: targetFormat,
      message: `a ${driver.name} stream's size is known only at its end, and ${targetFormat} images cannot be resized: convert to raw or qcow2`,
    });
  await createImage({
    path: request.targetPath,
    format: targetFormat,
    sizeBytes: streamed.sizeBytes ?? UNKNOWN_SIZE_START_BYTES,
    options: request.options ?? {},
  });
  const target = await openImage(request.targetPath, {
    format: targetFormat,
    openFile: (path, readOnly) =>
      NodeHostFile.open(path, {
        readOnly,
        writebackEveryBytes: TARGET_WRITEBACK_BYTES,
        skipSync: request.targetCache === 'unsafe',
      }),
  });
  try {
    return await streamed.copyInto(target, {
      spillPath: spillPathFor(request.targetPath),
      onProgress: request.onProgress,
    });
  } finally {
    await target.close();
  }
}
