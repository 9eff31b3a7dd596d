// qemu-img measure: how many host bytes an image of the output format needs, for a given size or
// for converting a given image. The arithmetic is the output format's (driver.measure); this file
// checks the request and fills the size from the source.

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import type { MeasureResult } from '../formats/driver.ts';
import { findDriver } from '../formats/registry.ts';

export interface MeasureRequest {
  /** `-O`: the format that would be created. */
  outputFormat: string;
  options: Record<string, string>;
  sizeBytes?: number;
  source?: BlockDevice;
}

/** Throws InvalidOptionError when neither or both of size and source are given, UnsupportedError without measure. */
export async function measureImage(request: MeasureRequest): Promise<MeasureResult> {
  if ((request.sizeBytes === undefined) === (request.source === undefined)) {
    throw new InvalidOptionError({
      option: 'size',
      message: 'Either --size N or one filename must be specified.',
    });
  }
  const driver = findDriver(request.outputFormat);
  if (!driver.measure) {
    throw new UnsupportedError({
      format: driver.name,
      feature: 'measure',
      message: `Format driver '${driver.name}' does not support measure`,
    });
  }
  const sizeBytes = request.sizeBytes ?? request.source?.sizeBytes ?? 0;
  return driver.measure({ sizeBytes, source: request.source, options: request.options });
}
