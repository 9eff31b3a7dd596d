// How big a disk's PVC must be: the engine's measure of a fully allocated image of spec.size (the
// driver's `measure` hook, qemu-img measure's "fully allocated size"), plus spec.storage.extraHeadroom,
// rounded up to MiB. Without a measure hook an upper bound on metadata is added instead.

import { quantityBytes } from '../api/quantity.ts';
import { engineFormatName, type VirtualDiskSpec } from '../api/virtual-disk.ts';
import { formatRegistry } from '../engine/formats/registry.ts';

const MIB = 1024 * 1024;

/** Metadata bound when a format has no measure hook: 1/256 of the size plus 2 MiB of headers. */
function estimateBytes(format: string, sizeBytes: number): number {
  if (format === 'raw') return sizeBytes;
  return sizeBytes + Math.ceil(sizeBytes / 256) + 2 * MIB;
}

/** Bytes the PVC must request for `spec` (MiB-aligned). */
export async function requiredClaimBytes(spec: VirtualDiskSpec): Promise<number> {
  const sizeBytes = quantityBytes(spec.size, 'spec.size');
  const format = engineFormatName(spec.format);
  const driver = formatRegistry.find((candidate) => candidate.name === format);
  let imageBytes = estimateBytes(format, sizeBytes);
  if (driver?.measure) {
    try {
      const measured = await driver.measure({ sizeBytes, options: spec.formatOptions ?? {} });
      // A fully allocated image holds at least every guest byte; anything less is not a measure.
      if (Number.isFinite(measured.fullyAllocatedBytes) && measured.fullyAllocatedBytes >= sizeBytes)
        imageBytes = measured.fullyAllocatedBytes;
    } catch {
      // A bad format option is reported by the imager with its code; the estimate sizes the claim.
    }
  }
  const headroomBytes = spec.storage?.extraHeadroom
    ? quantityBytes(spec.storage.extraHeadroom, 'spec.storage.extraHeadroom')
    : 0;
  return Math.ceil((imageBytes + headroomBytes) / MIB) * MIB;
}
