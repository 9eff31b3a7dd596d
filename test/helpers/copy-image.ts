// Test helper: copies one image's guest content into another through the engine (open both with
// openImage, stream 1 MiB chunks, skip runs the source reports as zero), as a minimal `convert -n`.

import { openImage } from '../../src/engine/open.ts';

/** Copies `sourcePath` (probed) into the existing image `targetPath` of `targetFormat`, then closes both. */
export async function copyImageInto(
  sourcePath: string,
  targetPath: string,
  targetFormat: string,
  sourceFormat?: string,
): Promise<void> {
  const source = await openImage(sourcePath, { readOnly: true, format: sourceFormat ?? 'raw' });
  const target = await openImage(targetPath, { format: targetFormat });
  try {
    const lengthBytes = Math.min(source.sizeBytes, target.sizeBytes);
    const buffer = new Uint8Array(1 << 20);
    let at = 0;
    while (at < lengthBytes) {
      const extents = await source.blockStatus(at, lengthBytes - at);
      for (const extent of extents) {
        for (let done = 0; done < extent.lengthBytes; done += buffer.length) {
          const part = buffer.subarray(0, Math.min(buffer.length, extent.lengthBytes - done));
          if (extent.zero) continue;
          await source.read(extent.offsetBytes + done, part);
          if (part.some((byte) => byte !== 0)) await target.write(extent.offsetBytes + done, part);
        }
        at = extent.offsetBytes + extent.lengthBytes;
      }
    }
  } finally {
    await target.close();
    await source.close();
  }
}
