// qemu-img resize: open the image read-write, work out the new guest size from an absolute or
// relative size, refuse to shrink without --shrink (shrinking deletes data past the new end), and
// let the format driver do it. Backing files follow the caller's escape policy.

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { openImage } from '../open.ts';

export interface ResizeImageRequest {
  path: string;
  /** `-f`; probed when absent. */
  format?: string;
  /** `--image-opts` driver options (encrypt.key-secret, ...). */
  driverOptions?: Record<string, string>;
  /** The new size: absolute (`relative` 0) or a change (+1 grow, -1 shrink) of `bytes`. */
  change: { relative: -1 | 0 | 1; bytes: number };
  /** `--shrink`: the user accepts losing data past the new end. */
  shrink: boolean;
  /** `--preallocation` for the grown part (off, metadata, falloc, full where the format has them). */
  preallocation?: string;
  allowBackingEscape?: boolean;
}

/** Resizes the image; returns the old and new guest sizes in bytes. Throws VdiskError subclasses. */
export async function resizeImage(
  request: ResizeImageRequest,
): Promise<{ oldSizeBytes: number; newSizeBytes: number }> {
  const device: BlockDevice = await openImage(request.path, {
    format: request.format,
    allowBackingEscape: request.allowBackingEscape ?? false,
    driverOptions: request.driverOptions,
  });
  try {
    const oldSizeBytes = device.sizeBytes;
    const { relative, bytes } = request.change;
    const newSizeBytes = relative === 0 ? bytes : oldSizeBytes + relative * bytes;
    if (newSizeBytes < 0 || (relative === -1 && bytes > oldSizeBytes)) {
      throw new InvalidOptionError({
        option: 'size',
        value: newSizeBytes,
        message: 'New image size must be positive',
      });
    }
    if (!device.resize) {
      throw new UnsupportedError({
        format: device.formatName,
        feature: 'resize',
        message: `${request.path}: Image format driver '${device.formatName}' does not support resize`,
      });
    }
    if (newSizeBytes < oldSizeBytes && !request.shrink) {
      throw new InvalidOptionError({
        option: 'shrink',
        value: newSizeBytes,
        message:
          "Use the --shrink option to perform a shrink operation. Shrinking an image will delete all data beyond the shrunken image's end.",
      });
    }
    if (newSizeBytes !== oldSizeBytes) {
      await device.resize(newSizeBytes, {
        shrink: request.shrink,
        allowDataLoss: request.shrink,
        ...(request.preallocation === undefined ? {} : { preallocation: request.preallocation }),
      });
      await device.flush();
    }
    return { oldSizeBytes, newSizeBytes };
  } finally {
    await device.close();
  }
}
