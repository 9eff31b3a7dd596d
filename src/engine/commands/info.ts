// qemu-img info: what each image of a chain says about itself. File names of backing layers are
// combined as qemu's path_combine does (the referencing image's folder prefixed, not normalised), so
// `filename` and `full-backing-filename` read as qemu prints them.

import { dirname } from 'node:path';
import type { BlockDevice, ImageInfo } from '../block-device.ts';
import { MAX_CHAIN_DEPTH } from '../open.ts';

/** qemu's path_combine: `reference` as is when absolute or a protocol URL, else beside `baseImage`. */
export function combineBackingPath(baseImage: string, reference: string): string {
  if (reference.startsWith('/') || /^[a-z][a-z0-9+.-]*:/i.test(reference)) return reference;
  const slash = baseImage.lastIndexOf('/');
  return slash < 0 ? reference : `${baseImage.slice(0, slash + 1)}${reference}`;
}

/** The info of `device` and, with `backingChain`, of every image below it (top first). */
export async function imageInfoChain(
  device: BlockDevice,
  path: string,
  backingChain: boolean,
): Promise<ImageInfo[]> {
  const result: ImageInfo[] = [];
  let layer: BlockDevice | undefined = device;
  let layerPath = path;
  while (layer && result.length < MAX_CHAIN_DEPTH) {
    const info = { ...(await layer.info()), filename: layerPath };
    // Drivers with internal snapshots may leave the list to their snapshot operations.
    if (info.snapshots === undefined && layer.snapshots) info.snapshots = await layer.snapshots.list();
    if (info.backingFilename) info.fullBackingFilename = combineBackingPath(layerPath, info.backingFilename);
    result.push(info);
    if (!backingChain || !info.fullBackingFilename) break;
    layerPath = info.fullBackingFilename;
    layer = layer.backing;
  }
  return result;
}

/** Folder a relative backing reference is resolved against (for callers that need the real path). */
export function backingFolder(path: string): string {
  return dirname(path);
}
