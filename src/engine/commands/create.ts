// qemu-img create: make (or truncate) the file and let the format's driver write its metadata.
// Without a size the backing file's size is used, as qemu-img create -b does; the backing reference
// is resolved against the new image's folder, as it will be when the image is opened.

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import type { OpenBackingFn } from '../formats/driver.ts';
import { findDriver } from '../formats/registry.ts';
import { NodeHostFile } from '../io/host-file.ts';
import { assertBackingInside, openDataFileFor, openImage, resolveBackingPath } from '../open.ts';
import { parseSize } from '../size.ts';

export interface CreateImageRequest {
  path: string;
  format: string;
  /** Guest size; taken from `-o size=` or the backing image when absent. */
  sizeBytes?: number;
  /** `-o` options in qemu spelling. */
  options: Record<string, string>;
  backingFile?: string;
  backingFormat?: string;
  /** `-u`: do not open the backing file (a size must then be given). */
  unsafe?: boolean;
  /** Let the backing file (and its chain) lie outside the new image's folder; off: refused. */
  allowBackingEscape?: boolean;
}

function backingOpener(imagePath: string, allowBackingEscape: boolean): OpenBackingFn {
  return async (reference, format) => {
    await assertBackingInside(reference, imagePath, allowBackingEscape);
    return openImage(resolveBackingPath(reference, imagePath), {
      format,
      readOnly: true,
      allowBackingEscape,
    });
  };
}

/** Creates the image; returns its guest size. Throws InvalidOptionError, UnsupportedError, I/O errors. */
export async function createImage(request: CreateImageRequest): Promise<{ sizeBytes: number }> {
  const driver = findDriver(request.format);
  if (!driver.create || !driver.capabilities.create) {
    throw new UnsupportedError({
      format: driver.name,
      feature: 'create',
      message: `Format driver '${driver.name}' does not support image creation`,
    });
  }
  const options = { ...request.options };
  const backingFile = request.backingFile ?? options.backing_file;
  const backingFormat = request.backingFormat ?? options.backing_fmt;
  delete options.backing_file;
  delete options.backing_fmt;
  let sizeBytes = request.sizeBytes;
  if (options.size !== undefined) {
    sizeBytes ??= parseSize(options.size, 'size');
    delete options.size;
  }
  if (backingFile && !driver.capabilities.backing) {
    throw new UnsupportedError({
      format: driver.name,
      feature: 'backing',
      message: `Backing file not supported for file format '${driver.name}'`,
    });
  }
  const allowEscape = request.allowBackingEscape ?? false;
  // Checked even with -u: the name is what later opens will follow.
  if (backingFile) await assertBackingInside(backingFile, request.path, allowEscape);
  if (backingFile && !request.unsafe) {
    let backing: BlockDevice | undefined;
    try {
      backing = await backingOpener(request.path, allowEscape)(backingFile, backingFormat);
      sizeBytes ??= backing.sizeBytes;
    } finally {
      await backing?.close();
    }
  }
  if (sizeBytes === undefined) {
    throw new InvalidOptionError({ option: 'size', message: 'Image creation needs a size parameter' });
  }
  const file = await NodeHostFile.open(request.path, { readOnly: false, create: true, truncate: true });
  try {
    await driver.create({
      path: request.path,
      file,
      sizeBytes,
      options,
      backingFile,
      backingFormat,
      openBacking: request.unsafe ? undefined : backingOpener(request.path, allowEscape),
      openDataFile: openDataFileFor(request.path, { readOnly: false, allowEscape }),
    });
  } finally {
    await file.close();
  }
  return { sizeBytes };
}
