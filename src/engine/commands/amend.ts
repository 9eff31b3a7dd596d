// qemu-img amend: change format options of an existing image in place, through the driver's
// BlockDevice.amend. The image is opened writable without its backing chain, as qemu-img does.

import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { openImage } from '../open.ts';

export interface AmendImageRequest {
  path: string;
  /** `-f`; probed when absent. */
  format?: string;
  /** The parsed `-o` list (qemu option names). */
  options: Record<string, string>;
  allowBackingEscape?: boolean;
}

/**
 * Amends the image. Throws UnsupportedError (VDISK_ENOTSUP) when the format cannot amend and the
 * driver's InvalidOptionError / UnsupportedError for the options themselves.
 */
export async function amendImage(request: AmendImageRequest): Promise<void> {
  if (Object.keys(request.options).length === 0)
    throw new InvalidOptionError({ option: 'o', message: 'Must specify options (-o)' });
  const device = await openImage(request.path, {
    format: request.format,
    noBacking: true,
    allowBackingEscape: request.allowBackingEscape ?? false,
  });
  try {
    if (!device.amend)
      throw new UnsupportedError({
        format: device.formatName,
        feature: 'amend',
        message: `Format driver '${device.formatName}' does not support option amendment`,
      });
    await device.amend(request.options);
    await device.flush();
  } finally {
    await device.close();
  }
}
