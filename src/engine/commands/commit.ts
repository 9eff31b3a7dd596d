// qemu-img commit: copy what the image (and, with -b, every layer down to the base) stores into the
// base of its backing chain, growing the base when it is smaller, then empty the image (unless -d, or
// -b, which implies -d as in qemu-img: the layers in between become invalid, the top must stay valid;
// or the format cannot be emptied, which qemu-img also passes over silently).
// The chain is opened read-only for reading and the base opened again, writable, on its own.

import { realpath } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { BlockDevice } from '../block-device.ts';
import { InvalidOptionError, UnsupportedError } from '../errors.ts';
import { openImage, resolveBackingPath } from '../open.ts';

export interface CommitImageRequest {
  path: string;
  /** `-f`; probed when absent. */
  format?: string;
  /** `-b`: the layer to commit into, as a path (default: the image's backing file). */
  base?: string;
  /** `-d`: leave the image as it is instead of emptying it. */
  drop: boolean;
  allowBackingEscape?: boolean;
  /** Driver options for every layer (`--image-opts`: encrypt.key-secret, ...). */
  driverOptions?: Record<string, string>;
  /** Called with the fraction done, 0..1 (`-p`). */
  onProgress?: (fraction: number) => void;
}

/** Bytes copied per read/write. */
const CHUNK_BYTES = 1024 * 1024;

interface Layer {
  device: BlockDevice;
  /** The path this layer was opened from, and its format. */
  path: string;
  format: string;
}

async function realOrResolved(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/** The layers of an opened chain with the paths they came from (backing names resolved as open.ts does). */
async function chainLayers(top: BlockDevice, path: string): Promise<Layer[]> {
  const layers: Layer[] = [];
  let device: BlockDevice | undefined = top;
  let layerPath = path;
  while (device) {
    layers.push({ device, path: layerPath, format: device.formatName });
    const info = await device.info();
    if (!device.backing || !info.backingFilename) break;
    layerPath = resolveBackingPath(info.backingFilename.replace(/^file:/, ''), layerPath);
    device = device.backing;
  }
  return layers;
}

/**
 * Commits the image into its base; returns the base's path. Throws InvalidOptionError (VDISK_EINVAL) when
 * the image has no backing file or `base` is not in its chain, UnsupportedError when the base is smaller
 * and cannot grow, and the I/O errors of the layers.
 */
export async function commitImage(request: CommitImageRequest): Promise<{ basePath: string }> {
  const allowBackingEscape = request.allowBackingEscape ?? false;
  const { driverOptions } = request;
  const top = await openImage(request.path, {
    format: request.format,
    readOnly: true,
    allowBackingEscape,
    driverOptions,
  });
  let basePath: string;
  let willEmpty = false;
  try {
    const layers = await chainLayers(top, request.path);
    if (layers.length < 2) {
      throw new InvalidOptionError({
        option: 'backing_file',
        message: 'Image does not have a backing file',
      });
    }
    // qemu-img commit leaves an image whose format cannot be emptied (no bdrv_make_empty: qed, vmdk, ...)
    // as it is and still succeeds; so does vdisk.
    willEmpty = !request.drop && request.base === undefined && top.makeEmpty !== undefined;
    let baseIndex = 1;
    if (request.base !== undefined) {
      // As qemu's bdrv_find_backing_image: a relative name may be meant from here or from the image's folder.
      const wanted = new Set([
        await realOrResolved(request.base),
        await realOrResolved(resolveBackingPath(request.base, request.path)),
      ]);
      baseIndex = -1;
      for (let index = 1; index < layers.length; index++) {
        if (wanted.has(await realOrResolved(layers[index]?.path ?? ''))) {
          baseIndex = index;
          break;
        }
      }
      if (baseIndex < 0) {
        throw new InvalidOptionError({
          option: 'base',
          value: request.base,
          message: `Did not find '${request.base}' in the backing chain of '${request.path}'`,
        });
      }
    }
    const baseLayer = layers[baseIndex] as Layer;
    basePath = baseLayer.path;
    const base = await openImage(basePath, {
      format: baseLayer.format,
      readOnly: false,
      allowBackingEscape,
      driverOptions,
    });
    try {
      if (base.sizeBytes < top.sizeBytes) {
        if (!base.resize)
          throw new UnsupportedError({
            format: base.formatName,
            feature: 'resize',
            message: `${basePath}: the base is smaller than the image and its format cannot grow`,
          });
        await base.resize(top.sizeBytes, { shrink: false });
      }
      const above = layers.slice(0, baseIndex);
      // Two buffers: the top's read of the next chunk overlaps the base's write of the last one. At
      // most one write is in flight, so writes land in order; a buffer is read into again only after
      // the write from it (two chunks back) has completed.
      const buffers = [new Uint8Array(CHUNK_BYTES), new Uint8Array(CHUNK_BYTES)];
      let next = 0;
      let writing: Promise<void> = Promise.resolve();
      for (const [layerIndex, layer] of above.entries()) {
        const sizeBytes = Math.min(layer.device.sizeBytes, top.sizeBytes);
        for (let offsetBytes = 0; offsetBytes < sizeBytes; ) {
          const extents = await layer.device.blockStatus(offsetBytes, sizeBytes - offsetBytes);
          if (extents.length === 0) break;
          for (const extent of extents) {
            offsetBytes = extent.offsetBytes + extent.lengthBytes;
            if (!extent.allocated) continue;
            if (extent.zero && layerIndex === 0) {
              await writing;
              await base.writeZeroes(extent.offsetBytes, extent.lengthBytes);
              continue;
            }
            // Read through the top: a range a lower layer allocates may be overridden higher up.
            for (let done = 0; done < extent.lengthBytes; done += CHUNK_BYTES) {
              const view = (buffers[next] as Uint8Array).subarray(
                0,
                Math.min(CHUNK_BYTES, extent.lengthBytes - done),
              );
              next ^= 1;
              await top.read(extent.offsetBytes + done, view);
              await writing;
              writing = base.write(extent.offsetBytes + done, view);
              // Reported when awaited; never an unhandled rejection meanwhile.
              writing.catch(() => undefined);
            }
          }
          request.onProgress?.((layerIndex + offsetBytes / sizeBytes) / above.length);
        }
      }
      await writing;
      await base.flush();
    } finally {
      await base.close();
    }
  } finally {
    await top.close();
  }
  if (willEmpty) {
    const image = await openImage(request.path, {
      format: request.format,
      noBacking: true,
      allowBackingEscape,
      driverOptions,
    });
    try {
      await image.makeEmpty?.();
      await image.flush();
    } finally {
      await image.close();
    }
  }
  request.onProgress?.(1);
  return { basePath };
}
