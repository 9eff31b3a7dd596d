// VHDX create settings (qemu 7.2's defaults and limits for -o subformat, log_size, block_size,
// block_state_zero), the file layout vdisk creates from them, and `measure` on top of both: the header
// section, log, metadata and BAT regions at 1 MiB multiples, then one payload block per stored block.

import { InvalidOptionError } from '../../errors.ts';
import { parseSize, sizeOption } from '../../size.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import type { MeasureInput, MeasureResult } from '../driver.ts';
import { batEntryCount, MiB, type VhdxMetadata } from './layout.ts';

export interface VhdxCreateSettings {
  subformat: 'dynamic' | 'fixed';
  logBytes: number;
  blockBytes: number;
  blockStateZero: boolean;
}

/** qemu's block size for a size when -o block_size is 0 or absent. */
function defaultBlockBytes(sizeBytes: number): number {
  const TiB = 1024 * 1024 * MiB;
  if (sizeBytes > 32 * TiB) return 64 * MiB;
  if (sizeBytes > 100 * 1024 * MiB) return 32 * MiB;
  if (sizeBytes > 1024 * MiB) return 16 * MiB;
  return 8 * MiB;
}

function boolOption(options: Record<string, string>, name: string, fallback: boolean): boolean {
  const text = options[name];
  if (text === undefined) return fallback;
  if (['on', 'true', 'yes'].includes(text)) return true;
  if (['off', 'false', 'no'].includes(text)) return false;
  throw new InvalidOptionError({
    option: name,
    value: text,
    message: `Parameter '${name}' expects 'on' or 'off'`,
  });
}

/** Parses and checks the create options for an image of `sizeBytes`; throws InvalidOptionError. */
export function vhdxCreateSettings(options: Record<string, string>, sizeBytes: number): VhdxCreateSettings {
  const subformat = options.subformat ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') {
    throw new InvalidOptionError({
      option: 'subformat',
      value: subformat,
      message: `Invalid subformat '${subformat}' (dynamic or fixed)`,
    });
  }
  const logBytes = sizeOption(options, 'log_size', MiB);
  if (logBytes < MiB || logBytes % MiB !== 0 || logBytes > 0xffffffff - MiB + 1) {
    throw new InvalidOptionError({
      option: 'log_size',
      value: logBytes,
      message: 'Log size must be a multiple of 1 MB',
    });
  }
  const blockBytes =
    options.block_size === undefined || options.block_size === '0'
      ? defaultBlockBytes(sizeBytes)
      : parseSize(options.block_size, 'block_size');
  if (blockBytes % MiB !== 0 || blockBytes > 256 * MiB || (blockBytes & (blockBytes - 1)) !== 0) {
    throw new InvalidOptionError({
      option: 'block_size',
      value: blockBytes,
      message: 'Block size must be a power of 2 multiple of 1 MB, at most 256 MB',
    });
  }
  if (sizeBytes % 512 !== 0 || sizeBytes > 64 * 1024 * 1024 * MiB) {
    throw new InvalidOptionError({
      option: 'size',
      value: sizeBytes,
      message: 'Image size must be a multiple of 512 bytes, at most 64 TiB',
    });
  }
  return { subformat, logBytes, blockBytes, blockStateZero: boolOption(options, 'block_state_zero', true) };
}

/** Where create puts each region: header section, log, metadata (1 MiB), BAT, then the payload blocks. */
export function vhdxFileLayout(
  metadata: Pick<VhdxMetadata, 'blockSizeBytes' | 'logicalSectorBytes' | 'virtualSizeBytes'>,
  logBytes: number,
): {
  logOffsetBytes: number;
  metadataOffsetBytes: number;
  batOffsetBytes: number;
  batRegionBytes: number;
  dataOffsetBytes: number;
} {
  const logOffsetBytes = MiB;
  const metadataOffsetBytes = logOffsetBytes + logBytes;
  const batOffsetBytes = metadataOffsetBytes + MiB;
  const batRegionBytes = Math.max(MiB, Math.ceil((batEntryCount(metadata) * 8) / MiB) * MiB);
  return {
    logOffsetBytes,
    metadataOffsetBytes,
    batOffsetBytes,
    batRegionBytes,
    dataOffsetBytes: batOffsetBytes + batRegionBytes,
  };
}

/**
 * Host bytes of a vhdx that vdisk would create (or convert into) for `input` (beyond qemu-img 7.2,
 * which cannot measure vhdx). Fixed images need every block; dynamic ones the blocks holding data.
 */
export async function measureVhdx(input: MeasureInput): Promise<MeasureResult> {
  const sizeBytes = Math.ceil(input.sizeBytes / 512) * 512;
  const settings = vhdxCreateSettings(input.options, sizeBytes);
  const { dataOffsetBytes } = vhdxFileLayout(
    { blockSizeBytes: settings.blockBytes, logicalSectorBytes: 512, virtualSizeBytes: sizeBytes },
    settings.logBytes,
  );
  const blocks = Math.ceil(sizeBytes / settings.blockBytes);
  const fullyAllocatedBytes = dataOffsetBytes + blocks * settings.blockBytes;
  if (settings.subformat === 'fixed') return { requiredBytes: fullyAllocatedBytes, fullyAllocatedBytes };
  let storedBlocks = 0;
  if (input.source) await forEachStoredUnit(input.source, settings.blockBytes, () => storedBlocks++);
  return {
    requiredBytes: dataOffsetBytes + Math.min(storedBlocks, blocks) * settings.blockBytes,
    fullyAllocatedBytes,
  };
}
