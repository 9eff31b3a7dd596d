// Opening an image by path: probe the format (or take -f), open the file, resolve the backing chain
// (relative names against the referencing image's folder, loops refused, names that escape the top
// image's folder refused unless allowed), and wrap the result in a GuardedDevice.

import { realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { BlockDevice } from './block-device.ts';
import { InvalidOptionError, PermissionError, UnsupportedError } from './errors.ts';
import type { FormatDriver, OpenBackingFn, OpenContext, OpenDataFileFn } from './formats/driver.ts';
import { findDriver, probeDriver } from './formats/registry.ts';
import { GuardedDevice } from './guarded-device.ts';
import { type HostFile, NodeHostFile } from './io/host-file.ts';

/** How many bytes a probe sees (formats whose magic sits further in look at their own file). */
export const PROBE_BYTES = 64 * 1024;
/** Backing chains deeper than this are refused (qemu has no limit; a loop is caught earlier). */
export const MAX_CHAIN_DEPTH = 256;

export interface OpenImageOptions {
  /** `-f`: skip probing. A probed raw image refuses writes that would change what it probes as. */
  format?: string;
  readOnly?: boolean;
  /** Do not open backing files (qemu-img's -u paths, `info` without a chain). */
  noBacking?: boolean;
  /** Allow backing files outside the top image's folder (off: a backing file may not escape its volume). */
  allowBackingEscape?: boolean;
  /**
   * The caller reads metadata only (qemu's BDRV_O_NO_IO, as `info` opens): encrypted images open without
   * their key, and data reads then fail. Otherwise a missing key fails the open.
   */
  metadataOnly?: boolean;
  /** Driver options (`--image-opts` style), passed to every layer's driver. */
  driverOptions?: Record<string, string>;
  /** Substitute for NodeHostFile.open (tests inject failing or crash-simulating files). */
  openFile?: (path: string, readOnly: boolean) => Promise<HostFile>;
}

interface ChainState {
  rootFolder: string;
  seen: Set<string>;
  depth: number;
}

async function realFolder(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/** True when `child` is `folder` or lies below it (both already resolved). */
export function isInside(child: string, folder: string): boolean {
  const rel = relative(folder, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** Reads the head a probe sees; short files give a short head. */
export async function readProbeHead(file: HostFile): Promise<Uint8Array> {
  const head = new Uint8Array(PROBE_BYTES);
  const count = await file.read(0, head);
  return head.subarray(0, count);
}

/** Resolves a backing reference as qemu does: absolute as is, relative to the referencing image's folder. */
export function resolveBackingPath(reference: string, referencingImage: string): string {
  return isAbsolute(reference) ? reference : resolve(dirname(referencingImage), reference);
}

async function openLayer(
  path: string,
  options: OpenImageOptions,
  chain: ChainState,
  formatHint: string | undefined,
): Promise<BlockDevice> {
  const readOnly = options.readOnly ?? false;
  const real = await realFolder(path);
  if (chain.seen.has(real)) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: path,
      message: `${path}: backing chain loops back to this image`,
    });
  }
  if (chain.depth >= MAX_CHAIN_DEPTH) {
    throw new InvalidOptionError({
      option: 'backing_file',
      value: path,
      message: `${path}: backing chain deeper than ${MAX_CHAIN_DEPTH} images`,
    });
  }
  chain.seen.add(real);
  const openFile = options.openFile ?? ((p: string, ro: boolean) => NodeHostFile.open(p, { readOnly: ro }));
  const file = await openFile(path, readOnly);
  try {
    let driver: FormatDriver;
    let probedRaw = false;
    if (formatHint) {
      driver = findDriver(formatHint);
    } else {
      const probed = probeDriver(await readProbeHead(file), path);
      if (!probed)
        throw new UnsupportedError({
          format: 'unknown',
          feature: 'probe',
          message: `${path}: Could not determine the image format`,
        });
      driver = probed;
      probedRaw = driver.name === 'raw';
    }
    const openBacking: OpenBackingFn | undefined = options.noBacking
      ? undefined
      : async (reference, format) => {
          if (/^[a-z+]+:/.test(reference) && !reference.startsWith('file:')) {
            throw new UnsupportedError({
              format: driver.name,
              feature: 'backing protocol',
              message: `${path}: backing file '${reference}' uses a protocol vdisk does not open`,
            });
          }
          const target = resolveBackingPath(reference.replace(/^file:/, ''), path);
          const targetReal = await realFolder(target);
          if (!options.allowBackingEscape && !isInside(targetReal, chain.rootFolder)) {
            throw new PermissionError({
              file: path,
              message: `backing file '${reference}' resolves to ${targetReal}, outside the image's folder ${chain.rootFolder} (pass --allow-backing-escape to permit)`,
            });
          }
          return openLayer(
            target,
            { ...options, readOnly: true },
            { ...chain, depth: chain.depth + 1 },
            format,
          );
        };
    const context: OpenContext = {
      path,
      file,
      readOnly,
      openBacking,
      options: options.driverOptions ?? {},
      metadataOnly: options.metadataOnly ?? false,
      openDataFile: openDataFileFor(path, {
        readOnly,
        allowEscape: options.allowBackingEscape ?? false,
        openFile: options.openFile,
      }),
    };
    const device = await driver.open(context);
    const sectorZeroGuard = probedRaw
      ? (sector: Uint8Array): string | undefined => {
          const wouldBe = probeDriver(sector, path);
          return wouldBe && wouldBe.name !== 'raw'
            ? `write to sector 0 refused: the image was probed as raw and the new bytes look like ${wouldBe.name} (use -f raw)`
            : undefined;
        }
      : undefined;
    return new GuardedDevice(device, { file: path, sectorZeroGuard });
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Refuses (PermissionError) a backing reference of `referencingImage` that resolves outside that image's
 * folder, unless `allowEscape`; the same rule openImage applies to every layer below the top one.
 */
export async function assertBackingInside(
  reference: string,
  referencingImage: string,
  allowEscape: boolean,
): Promise<void> {
  if (allowEscape) return;
  const folder = await realFolder(dirname(resolve(referencingImage)));
  const target = await realFolder(resolveBackingPath(reference, referencingImage));
  if (!isInside(target, folder)) {
    throw new PermissionError({
      file: referencingImage,
      message: `backing file '${reference}' resolves to ${target}, outside the image's folder ${folder} (pass --allow-backing-escape to permit)`,
    });
  }
}

/**
 * The opener for external data files of the image at `imagePath`: a relative name is resolved against
 * the image's folder (qemu 7.2 resolves it against the current directory), and a name that resolves
 * outside that folder is refused (PermissionError) unless `allowEscape`, as backing files are.
 */
export function openDataFileFor(
  imagePath: string,
  options: {
    readOnly: boolean;
    allowEscape: boolean;
    openFile?: (path: string, readOnly: boolean) => Promise<HostFile>;
  },
): OpenDataFileFn {
  return async (reference, { create }) => {
    if (/^[a-z+]+:/.test(reference) && !reference.startsWith('file:')) {
      throw new UnsupportedError({
        format: 'qcow2',
        feature: 'data file protocol',
        message: `${imagePath}: data file '${reference}' uses a protocol vdisk does not open`,
      });
    }
    const name = reference.replace(/^file:/, '');
    // Joined, not resolved: the file keeps a name like qemu's (`d.raw` beside `i.qcow2`) for map's output.
    const target = isAbsolute(name) ? name : join(dirname(imagePath), name);
    if (!options.allowEscape) {
      const folder = await realFolder(dirname(resolve(imagePath)));
      const real = create
        ? resolve(await realFolder(dirname(target)), basename(target))
        : await realFolder(target);
      if (!isInside(real, folder))
        throw new PermissionError({
          file: imagePath,
          message: `data file '${reference}' resolves to ${real}, outside the image's folder ${folder} (pass --allow-backing-escape to permit)`,
        });
    }
    if (create) return NodeHostFile.open(target, { readOnly: false, create: true, truncate: true });
    return options.openFile
      ? options.openFile(target, options.readOnly)
      : NodeHostFile.open(target, { readOnly: options.readOnly });
  };
}

/** Opens `path` as a guarded block device with its backing chain. Throws VdiskError subclasses. */
export async function openImage(path: string, options: OpenImageOptions = {}): Promise<BlockDevice> {
  const rootFolder = await realFolder(dirname(resolve(path)));
  return openLayer(path, options, { rootFolder, seen: new Set(), depth: 0 }, options.format);
}
