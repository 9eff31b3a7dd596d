// qemu-img rebase: point an image at a new backing file. Unsafe mode (-u) only rewrites the reference.
// Safe mode first copies into the image every sector where the old and the new backing chain read
// differently and the image has no data of its own, so the guest sees the same bytes afterwards; an
// empty new name flattens (the "new backing" reads as zeros). Written against BlockDevice only.

import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, isVdiskError, UnsupportedError } from '../errors.ts';
import { assertBackingInside, openImage, resolveBackingPath } from '../open.ts';

export interface RebaseImageRequest {
  path: string;
  /** `-f`; probed when absent. */
  format?: string;
  /** `-b`: the new backing file as it will be recorded (relative to the image's folder); '' removes it. */
  backing: string;
  /** `-F`: required with a non-empty `backing`, as in qemu-img 7.2. */
  backingFormat?: string;
  /** `-u`: rewrite the reference only; the caller vouches that the content is the same. */
  unsafe: boolean;
  allowBackingEscape?: boolean;
  /** Driver options for the image and its chains (`--image-opts`: encrypt.key-secret, ...). */
  driverOptions?: Record<string, string>;
  /** Called with the fraction done, 0..1 (`-p`). */
  onProgress?: (fraction: number) => void;
}

/** Bytes compared per step of safe mode. */
const CHUNK_BYTES = 1024 * 1024;
const SECTOR_BYTES = 512;

/** Reads `buffer.length` bytes at `offsetBytes` from `device`, zeros past its end (or with no device). */
export async function readPadded(
  device: BlockDevice | undefined,
  offsetBytes: number,
  buffer: Uint8Array,
): Promise<void> {
  buffer.fill(0);
  if (!device) return;
  const available = Math.max(0, Math.min(buffer.length, device.sizeBytes - offsetBytes));
  if (available > 0) await device.read(offsetBytes, buffer.subarray(0, available));
}

function unsupported(device: BlockDevice, path: string): UnsupportedError {
  return new UnsupportedError({
    format: device.formatName,
    feature: 'changing the backing file',
    message: `Could not change the backing file of '${path}': Operation not supported`,
  });
}

/** Copies into `device` the sectors of [offset, offset+length) where `oldBacking` and `newBacking` differ. */
async function copyDifferences(
  device: BlockDevice,
  oldBacking: BlockDevice | undefined,
  newBacking: BlockDevice | undefined,
  offsetBytes: number,
  lengthBytes: number,
): Promise<void> {
  const oldData = new Uint8Array(CHUNK_BYTES);
  const newData = new Uint8Array(CHUNK_BYTES);
  for (let done = 0; done < lengthBytes; done += CHUNK_BYTES) {
    const at = offsetBytes + done;
    const stepBytes = Math.min(CHUNK_BYTES, lengthBytes - done);
    const oldView = oldData.subarray(0, stepBytes);
    const newView = newData.subarray(0, stepBytes);
    await readPadded(oldBacking, at, oldView);
    await readPadded(newBacking, at, newView);
    // Most chunks are the same in both chains: one comparison instead of one per sector.
    if (
      Buffer.from(oldView.buffer, oldView.byteOffset, stepBytes).equals(
        Buffer.from(newView.buffer, newView.byteOffset, stepBytes),
      )
    )
      continue;
    let runStart = -1;
    for (let sector = 0; sector <= stepBytes; sector += SECTOR_BYTES) {
      const end = Math.min(sector + SECTOR_BYTES, stepBytes);
      const differs =
        sector < stepBytes &&
        !Buffer.from(oldView.buffer, oldView.byteOffset + sector, end - sector).equals(
          Buffer.from(newView.buffer, newView.byteOffset + sector, end - sector),
        );
      if (differs && runStart < 0) runStart = sector;
      if (!differs && runStart >= 0) {
        await device.write(at + runStart, oldView.subarray(runStart, sector));
        runStart = -1;
      }
    }
  }
}

/**
 * Rebases the image onto `request.backing`. Throws InvalidOptionError (VDISK_EINVAL) for a missing -F or
 * an unopenable new backing file, PermissionError when the new backing escapes the image's folder (unless
 * allowed) and UnsupportedError when the format records no backing file.
 */
export async function rebaseImage(request: RebaseImageRequest): Promise<void> {
  const { path, backing, unsafe } = request;
  const allowBackingEscape = request.allowBackingEscape ?? false;
  if (backing !== '' && !request.backingFormat) {
    throw new InvalidOptionError({
      option: 'backing_fmt',
      message: `Could not change the backing file to '${backing}': backing format must be specified`,
    });
  }
  if (backing !== '') await assertBackingInside(backing, path, allowBackingEscape);
  const device = await openImage(path, {
    format: request.format,
    noBacking: unsafe,
    allowBackingEscape,
    driverOptions: request.driverOptions,
  });
  try {
    if (!device.setBackingFile) throw unsupported(device, path);
    if (!unsafe) {
      let newBacking: BlockDevice | undefined;
      if (backing !== '') {
        try {
          newBacking = await openImage(resolveBackingPath(backing, path), {
            format: request.backingFormat,
            readOnly: true,
            allowBackingEscape,
            driverOptions: request.driverOptions,
          });
        } catch (err) {
          if (!isVdiskError(err)) throw err;
          throw new InvalidOptionError({
            option: 'backing_file',
            value: backing,
            message: `Could not open new backing file '${backing}': ${err.message}`,
            cause: err,
          });
        }
      }
      try {
        for (let offsetBytes = 0; offsetBytes < device.sizeBytes; ) {
          const extents = await device.blockStatus(offsetBytes, device.sizeBytes - offsetBytes);
          if (extents.length === 0) break;
          for (const extent of extents) {
            if (!extent.allocated)
              await copyDifferences(
                device,
                device.backing,
                newBacking,
                extent.offsetBytes,
                extent.lengthBytes,
              );
            offsetBytes = extent.offsetBytes + extent.lengthBytes;
          }
          request.onProgress?.(offsetBytes / device.sizeBytes);
        }
        await device.flush();
      } finally {
        await newBacking?.close();
      }
    }
    await device.setBackingFile(
      backing === '' ? undefined : backing,
      backing === '' ? undefined : request.backingFormat,
    );
    await device.flush();
  } finally {
    await device.close();
  }
  request.onProgress?.(1);
}
