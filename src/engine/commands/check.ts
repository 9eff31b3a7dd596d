// qemu-img check: the format driver inspects (and with -r mends) its own metadata; this file only
// finds the driver and opens the file, read-only unless repairing. Raw and other formats without a
// checker raise UnsupportedError (feature 'check'), which the CLI turns into qemu's exit code 63.

import { UnsupportedError } from '../errors.ts';
import type { CheckReport, FormatDriver, RepairMode } from '../formats/driver.ts';
import { findDriver, probeDriver } from '../formats/registry.ts';
import { NodeHostFile } from '../io/host-file.ts';
import { readProbeHead } from '../open.ts';

export interface CheckResult {
  format: string;
  report: CheckReport;
}

/** Checks the image at `path`; `format` skips probing. Throws UnsupportedError when the format has no checker. */
export async function checkImage(
  path: string,
  options: { format?: string; repair?: RepairMode } = {},
): Promise<CheckResult> {
  const repair = options.repair ?? 'none';
  const file = await NodeHostFile.open(path, { readOnly: repair === 'none' });
  try {
    const driver: FormatDriver | undefined = options.format
      ? findDriver(options.format)
      : probeDriver(await readProbeHead(file), path);
    if (!driver)
      throw new UnsupportedError({
        format: 'unknown',
        feature: 'probe',
        message: `${path}: Could not determine the image format`,
      });
    if (!driver.check) {
      throw new UnsupportedError({
        format: driver.name,
        feature: 'check',
        message: 'This image format does not support checks',
      });
    }
    const report = await driver.check(
      { path, file, readOnly: repair === 'none', openBacking: undefined, options: {} },
      repair,
    );
    return { format: driver.name, report };
  } finally {
    await file.close().catch(() => undefined);
  }
}
