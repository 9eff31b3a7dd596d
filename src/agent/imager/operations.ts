// The imager's operations on a PVC, each idempotent so a retried or duplicated Job is harmless:
// an image that already exists is reported, not remade; new images are built under a temporary
// name and renamed into place (a killed pod leaves no half image behind the real name); grow and
// snapshot steps check first whether they are already done. All paths here are host paths.

import { access, mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { ImagerRequest } from '../../api/imager.ts';
import { convertImage } from '../../engine/commands/convert-image.ts';
import { createImage } from '../../engine/commands/create.ts';
import { InvalidOptionError, NotFoundError, UnsupportedError } from '../../engine/errors.ts';
import { openImage } from '../../engine/open.ts';
import { importFromHttp } from './http-import.ts';
import type { ProgressSink } from './progress.ts';

export interface OperationOutcome {
  /** Host path of the image to report. */
  imagePath: string;
  sha256?: string;
  snapshot?: { name: string; creationTime?: string };
}

/** Resolves a container path to a host path (hostPath() in production, identity in unit tests). */
export type PathResolver = (containerPath: string) => string;

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

function partialPath(imagePath: string): string {
  return join(dirname(imagePath), `.${basename(imagePath)}.partial`);
}

function need<T>(value: T | undefined, option: string, operation: string): T {
  if (value === undefined)
    throw new InvalidOptionError({ option, message: `imager ${operation}: --${option} is required` });
  return value;
}

/** Grows the image to `sizeBytes` when smaller; with `refuseLarger`, an image already larger is an error. */
async function growTo(
  imagePath: string,
  format: string | undefined,
  sizeBytes: number | undefined,
  refuseLarger = false,
): Promise<void> {
  if (sizeBytes === undefined) return;
  const device = await openImage(imagePath, { format });
  try {
    if (refuseLarger && device.sizeBytes > sizeBytes) {
      throw new InvalidOptionError({
        option: 'size',
        value: sizeBytes,
        message: `the source is ${device.sizeBytes} bytes, larger than the disk size of ${sizeBytes} bytes: grow spec.size`,
      });
    }
    if (device.sizeBytes >= sizeBytes) return;
    if (!device.resize)
      throw new UnsupportedError({
        format: device.formatName,
        feature: 'resize',
        message: `${device.formatName} images cannot be resized by vdisk yet`,
      });
    await device.resize(sizeBytes, { shrink: false });
    await device.flush();
  } finally {
    await device.close();
  }
}

/** Builds a new image at a temporary name with `build`, grows it, then renames it into place. */
async function publish(
  imagePath: string,
  request: ImagerRequest,
  build: (targetPath: string) => Promise<void>,
): Promise<void> {
  const temporary = partialPath(imagePath);
  await rm(temporary, { force: true });
  try {
    await build(temporary);
    // A copy larger than the disk would overflow a PVC sized for spec.size. A new blank image may be
    // a little larger than asked: vpc rounds up to its CHS geometry, as qemu-img does (force_size=on
    // keeps the exact size).
    await growTo(temporary, request.format, request.sizeBytes, request.operation !== 'create');
    await rename(temporary, imagePath);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
}

async function snapshotCreate(imagePath: string, request: ImagerRequest): Promise<OperationOutcome> {
  const name = need(request.snapshot, 'snapshot', request.operation);
  if (request.mode === 'external') {
    // The frozen image sits beside the overlay, so backing references stay plain file names.
    const frozen = join(dirname(imagePath), `snapshot-${name}.qcow2`);
    if (!(await exists(frozen))) {
      if (!(await exists(imagePath))) throw new NotFoundError({ file: imagePath });
      await rename(imagePath, frozen);
    }
    if (!(await exists(imagePath))) {
      const temporary = partialPath(imagePath);
      await createImage({
        path: temporary,
        format: 'qcow2',
        options: {},
        backingFile: basename(frozen),
        backingFormat: 'qcow2',
      });
      await rename(temporary, imagePath);
    }
    const created = await stat(frozen);
    return {
      imagePath,
      snapshot: { name, creationTime: created.mtime.toISOString().replace(/\.\d{3}Z$/, 'Z') },
    };
  }
  const device = await openImage(imagePath, { format: 'qcow2' });
  try {
    if (!device.snapshots)
      throw new UnsupportedError({ format: device.formatName, feature: 'internal snapshots' });
    const existing = (await device.snapshots.list()).find((snapshot) => snapshot.name === name);
    const taken = existing ?? (await device.snapshots.create(name));
    await device.flush();
    return {
      imagePath,
      snapshot: {
        name,
        creationTime: new Date(taken.dateSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'),
      },
    };
  } finally {
    await device.close();
  }
}

async function snapshotDelete(imagePath: string, request: ImagerRequest): Promise<OperationOutcome> {
  const name = need(request.snapshot, 'snapshot', request.operation);
  if (request.mode === 'external') {
    // The frozen file is the overlay's backing file: removing it needs a commit, which vdisk does not
    // do on its own here; the file stays and still backs the disk.
    return { imagePath, snapshot: { name } };
  }
  const device = await openImage(imagePath, { format: 'qcow2' });
  try {
    if (!device.snapshots)
      throw new UnsupportedError({ format: device.formatName, feature: 'internal snapshots' });
    if ((await device.snapshots.list()).some((snapshot) => snapshot.name === name))
      await device.snapshots.delete(name);
    await device.flush();
  } finally {
    await device.close();
  }
  return { imagePath, snapshot: { name } };
}

/** Runs one operation; returns what to report. Throws VdiskError subclasses. */
export async function runOperation(
  request: ImagerRequest,
  resolve: PathResolver,
  onProgress?: ProgressSink,
): Promise<OperationOutcome> {
  const imagePath = resolve(request.image);
  await mkdir(dirname(imagePath), { recursive: true });
  const already = await exists(imagePath);
  switch (request.operation) {
    case 'info':
      return { imagePath };
    case 'create':
      if (!already) {
        await publish(imagePath, request, (target) =>
          createImage({
            path: target,
            format: need(request.format, 'format', 'create'),
            sizeBytes: need(request.sizeBytes, 'size', 'create'),
            options: request.options ?? {},
          }).then(() => undefined),
        );
      }
      return { imagePath };
    case 'import': {
      if (already) return { imagePath };
      let sha256: string | undefined;
      await publish(imagePath, request, async (target) => {
        const result = await importFromHttp({
          url: need(request.url, 'url', 'import'),
          ...(request.sha256 ? { sha256: request.sha256 } : {}),
          ...(request.sourceFormat ? { sourceFormat: request.sourceFormat } : {}),
          ...(request.headersFile ? { headersFile: resolve(request.headersFile) } : {}),
          targetPath: target,
          targetFormat: need(request.format, 'format', 'import'),
          targetSizeBytes: need(request.sizeBytes, 'size', 'import'),
          targetOptions: request.options ?? {},
          tempPath: join(dirname(imagePath), '.download.partial'),
          ...(onProgress ? { onProgress } : {}),
        });
        sha256 = result.sha256;
      });
      return { imagePath, ...(sha256 ? { sha256 } : {}) };
    }
    case 'clone':
    case 'restore':
      if (!already) {
        const sourcePath = resolve(need(request.source, 'source', request.operation));
        await publish(imagePath, request, async (target) => {
          await convertImage({
            sourcePath,
            ...(request.snapshot ? { sourceSnapshot: request.snapshot } : {}),
            targetPath: target,
            targetFormat: need(request.format, 'format', request.operation),
            options: request.options ?? {},
            ...(onProgress
              ? {
                  onProgress: (doneBytes: number, totalBytes: number) =>
                    onProgress(totalBytes > 0 ? (100 * doneBytes) / totalBytes : 100),
                }
              : {}),
          });
        });
      }
      return { imagePath };
    case 'resize':
      await growTo(imagePath, request.format, need(request.sizeBytes, 'size', 'resize'));
      return { imagePath };
    case 'snapshot-create':
      return snapshotCreate(imagePath, request);
    case 'snapshot-delete':
      return snapshotDelete(imagePath, request);
  }
}
