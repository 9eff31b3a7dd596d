// Differencing VHD parent lookup: which file a differencing disk's parent locators (or parent_name)
// point at. Spec: VHD format specification v1.0, "Dynamic Disk Header Format", Parent Locator Entries
// (platform codes W2ru = relative UTF-16LE path, W2ku = absolute UTF-16LE path, MacX = UTF-8 file URL).

import { ImageFormatError } from '../../errors.ts';
import type { HostFile } from '../../io/host-file.ts';
import type { VpcDynamicHeader } from './footer.ts';

/** Longest parent locator vdisk reads; Windows paths are at most 32 Ki UTF-16 units. */
const MAX_LOCATOR_BYTES = 64 * 1024;
/** Preference order: a relative name survives moving the pair of files together. */
const PLATFORM_ORDER = ['W2ru', 'W2ku', 'MacX'];

function windowsToPosix(path: string): string {
  let posix = path.replace(/\\/g, '/');
  if (posix.startsWith('./')) posix = posix.slice(2);
  return posix;
}

/**
 * The parent reference of a differencing disk: the first readable locator in W2ru, W2ku, MacX order,
 * else the header's parent_name. Throws ImageFormatError when none names a file.
 */
export async function readParentReference(
  file: HostFile,
  header: VpcDynamicHeader,
  fileSizeBytes: number,
): Promise<string> {
  for (const code of PLATFORM_ORDER) {
    const locator = header.parentLocators.find((candidate) => candidate.platformCode === code);
    if (!locator || locator.dataLengthBytes === 0) continue;
    const lengthBytes = Math.min(locator.dataLengthBytes, MAX_LOCATOR_BYTES);
    if (locator.dataOffsetBytes + lengthBytes > fileSizeBytes) continue;
    const bytes = Buffer.alloc(lengthBytes);
    await file.read(locator.dataOffsetBytes, bytes);
    let text =
      code === 'MacX'
        ? bytes.toString('utf8')
        : bytes.subarray(0, lengthBytes - (lengthBytes % 2)).toString('utf16le');
    text = text.replace(/\0+$/, '');
    if (code === 'MacX') text = decodeURIComponent(text.replace(/^file:\/\/(localhost)?/, ''));
    if (text) return windowsToPosix(text);
  }
  if (header.parentName) return windowsToPosix(header.parentName);
  throw new ImageFormatError({
    file: file.path,
    offsetBytes: 576,
    message: 'differencing VHD names no parent (no locator, no parent_name)',
  });
}
