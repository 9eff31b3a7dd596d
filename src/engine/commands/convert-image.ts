// qemu-img convert from paths: open the source read-only (a snapshot of it with -l), create the
// target (unless -n) with the source's size and -o options (a backing file with -B), open it, run
// the copy loop of convert.ts, flush and close both. The imager agent and the CLI both call this.

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { NodeHostFile } from '../io/host-file.ts';
import { openImage } from '../open.ts';
import { type ConvertDeviceOptions, type ConvertStats, convertDevice } from './convert.ts';
import { ConcatDevice } from './concat-device.ts';
import { createImage } from './create.ts';

/** How much the copy writes into the target between starts of writeback (see NodeHostFile). */
const TARGET_WRITEBACK_BYTES = 16 * 1024 * 1024;

export interface ConvertImageRequest
  extends Omit<ConvertDeviceOptions, 'targetHasBacking' | 'targetIsZeroed'> {
  sourcePath: string;
  /** Further sources read after the first, back to back (qemu-img convert a b c out). */
  moreSourcePaths?: readonly string[];
  /** `-f` (for every source); probed when absent. */
  sourceFormat?: string;
  /** `-l`: convert this internal snapshot of the source instead of its active state. */
  sourceSnapshot?: string;
  targetPath: string;
  /** `-O`; raw when absent. */
  targetFormat?: string;
  /** `-o` options for the target, in qemu spelling. */
  options?: Record<string, string>;
  /** Driver options for opening every source (`--image-opts`: encrypt.key-secret, ...). */
  sourceDriverOptions?: Record<string, string>;
  /** Driver options for opening the target (`--target-image-opts`); `-o *key-secret` options are added. */
  targetDriverOptions?: Record<string, string>;
  /** `-B` / `-F`: the target gets this backing file, and only what the source's top layer holds is copied. */
  backingFile?: string;
  backingFormat?: string;
  /** `-n`: the target exists already; it is opened, not created. */
  skipCreate?: boolean;
  /** `--target-is-zero` (with -n): the existing target reads as zeros. */
  targetIsZero?: boolean;
  /**
   * `-t`: the target's cache mode. Only `unsafe` changes anything: the target is never synced (qemu-img
   * convert's own default; fastest, nothing durable on return). Otherwise the copy ends with a flush
   * that makes the target durable (fdatasync), whatever mode is named.
   */
  targetCache?: string;
  /** Let backing files of the source or target lie outside their image's folder; off: refused. */
  allowBackingEscape?: boolean;
}

/** Converts one image to another; throws VdiskError subclasses, leaving a partial target on failure. */
export async function convertImage(request: ConvertImageRequest): Promise<ConvertStats> {
  const targetFormat = request.targetFormat ?? 'raw';
  if (request.targetIsZero && !request.skipCreate) {
    throw new InvalidOptionError({
      option: 'target-is-zero',
      message: '--target-is-zero requires use of -n flag',
    });
  }
  const concatenating = (request.moreSourcePaths?.length ?? 0) > 0;
  if (concatenating && request.backingFile !== undefined) {
    throw new InvalidOptionError({
      option: 'B',
      message: 'Having a backing file for the target makes no sense when concatenating multiple input images',
    });
  }
  if (concatenating && request.sourceSnapshot !== undefined) {
    throw new InvalidOptionError({ option: 'l', message: 'No support for concatenating multiple snapshot' });
  }
  const options = request.options ?? {};
  if (request.compressed && (options['encrypt.format'] !== undefined || options.encryption === 'on')) {
    // As qemu-img, before anything is made: an encrypted image never stores a cluster compressed.
    throw new UnsupportedError({
      format: targetFormat,
      feature: 'compression with encryption',
      message: 'Compression and encryption not supported at the same time',
    });
  }
  const allowBackingEscape = request.allowBackingEscape ?? false;
  let source: BlockDevice | undefined;
  let snapshot: BlockDevice | undefined;
  let target: BlockDevice | undefined;
  try {
    const openSource = (path: string): Promise<BlockDevice> =>
      openImage(path, {
        format: request.sourceFormat,
        readOnly: true,
        allowBackingEscape,
        driverOptions: request.sourceDriverOptions,
      });
    if (concatenating) {
      const opened: BlockDevice[] = [];
      try {
        for (const path of [request.sourcePath, ...(request.moreSourcePaths ?? [])])
          opened.push(await openSource(path));
      } catch (err) {
        await Promise.allSettled(opened.map((device) => device.close()));
        throw err;
      }
      source = new ConcatDevice(opened);
    } else {
      source = await openSource(request.sourcePath);
    }
    if (request.sourceSnapshot !== undefined) {
      if (!source.snapshots)
        throw new UnsupportedError({
          format: source.formatName,
          feature: 'snapshots',
          message: `${request.sourcePath}: the format has no internal snapshots`,
        });
      snapshot = await source.snapshots.open(request.sourceSnapshot);
    }
    const from = snapshot ?? source;
    if (!request.skipCreate) {
      await createImage({
        path: request.targetPath,
        format: targetFormat,
        sizeBytes: from.sizeBytes,
        options: request.options ?? {},
        backingFile: request.backingFile,
        backingFormat: request.backingFormat,
        allowBackingEscape,
      });
    }
    // As qemu-img's img_add_key_secrets: the key a -o option gave the new image also opens it.
    const targetDriverOptions = { ...request.targetDriverOptions };
    for (const [name, value] of Object.entries(request.options ?? {}))
      if (name.endsWith('key-secret')) targetDriverOptions[name] = value;
    target = await openImage(request.targetPath, {
      format: targetFormat,
      allowBackingEscape,
      driverOptions: targetDriverOptions,
      // The copy streams into the target: start writeback as it goes, so the closing flush (which
      // makes the result durable) waits only for the tail instead of the whole image.
      openFile: (path, readOnly) =>
        NodeHostFile.open(path, {
          readOnly,
          writebackEveryBytes: TARGET_WRITEBACK_BYTES,
          skipSync: request.targetCache === 'unsafe',
        }),
    });
    return await convertDevice(from, target, {
      ...request,
      targetHasBacking: request.backingFile !== undefined,
      targetIsZeroed: request.skipCreate ? (request.targetIsZero ?? false) : target.hasZeroInit !== false,
    });
  } finally {
    await target?.close();
    await snapshot?.close().catch(() => undefined);
    await source?.close().catch(() => undefined);
  }
}
