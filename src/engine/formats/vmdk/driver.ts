// The vmdk driver record: probe (sparse magic, or a text descriptor whose first statement is
// `version=N`, as qemu 7.2's vmdk_probe), open, create, check (grains inside their files) and measure.
// The folder's only export; the layouts live in sparse-header.ts, descriptor.ts and sparse-extent.ts.

import type {
  CheckReport,
  FormatDriver,
  MeasureInput,
  MeasureResult,
  OpenContext,
  RepairMode,
} from '../driver.ts';
import { UnsupportedError } from '../../errors.ts';
import { forEachStoredUnit } from '../common/measure.ts';
import { createVmdk, vmdkCreateOptions } from './create.ts';
import type { VmdkDevice } from './device.ts';
import { openVmdk } from './open.ts';
import { VMDK3_MAGIC, VMDK4_MAGIC } from './sparse-header.ts';

/** qemu's vmdk_probe: 100 for KDMV/COWD; for text, skip comments and blank lines, then `version=1|2|3`. */
function probeVmdk(head: Uint8Array): number {
  if (head.length >= 4) {
    const magic = new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(0, true);
    if (magic === VMDK4_MAGIC || magic === VMDK3_MAGIC) return 100;
  }
  const text = Buffer.from(head.subarray(0, Math.min(head.length, 4096))).toString('latin1');
  let at = 0;
  while (at < text.length) {
    if (text[at] === '#') {
      const end = text.indexOf('\n', at);
      if (end < 0) return 0;
      at = end + 1;
      continue;
    }
    if (text[at] === ' ') {
      while (text[at] === ' ') at++;
      if (text[at] === '\r') at++;
      if (at < text.length && text[at] !== '\n') return 0;
      at++;
      continue;
    }
    return /^version=[123]\r?\n/.test(text.slice(at, at + 11)) ? 100 : 0;
  }
  return 0;
}

async function checkVmdk(context: OpenContext, repair: RepairMode): Promise<CheckReport> {
  if (repair !== 'none') throw new UnsupportedError({ format: 'vmdk', feature: 'check repair' });
  const device = (await openVmdk({ ...context, readOnly: true, openBacking: undefined })) as VmdkDevice;
  try {
    const issues = await device.checkGrains();
    return {
      issues,
      leaks: 0,
      corruptions: issues.length,
      checkErrors: 0,
      leaksFixed: 0,
      corruptionsFixed: 0,
    };
  } finally {
    // The caller owns context.file; close only the extra extent files the device opened.
    for (const extent of device.extents)
      if (extent.file && extent.file !== context.file) await extent.file.close();
  }
}

/** Host bytes for a monolithicSparse (or flat) image of the input's size and allocation. */
async function measureVmdk(input: MeasureInput): Promise<MeasureResult> {
  const grainBytes = 64 * 1024;
  const sizeBytes = Math.ceil(input.sizeBytes / 512) * 512;
  const subformat = input.options.subformat ?? 'monolithicSparse';
  if (subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat') {
    return { requiredBytes: sizeBytes, fullyAllocatedBytes: sizeBytes };
  }
  const grains = Math.ceil(sizeBytes / grainBytes);
  const gtCount = Math.ceil(grains / 512);
  const gdSectors = Math.ceil((gtCount * 4) / 512);
  const overheadBytes = Math.ceil((21 + 2 * (gdSectors + gtCount * 4)) / 128) * 128 * 512;
  // Without a source (--size) the image would be empty: metadata only, as qemu measures qcow2.
  let allocatedGrains = 0;
  if (input.source) {
    await forEachStoredUnit(input.source, grainBytes, (grain) => {
      if (grain < grains) allocatedGrains++;
    });
  }
  return {
    requiredBytes: overheadBytes + allocatedGrains * grainBytes,
    fullyAllocatedBytes: overheadBytes + grains * grainBytes,
  };
}

export const vmdkDriver = {
  name: 'vmdk',
  description:
    'VMware VMDK: monolithic/split sparse and flat, stream-optimized, descriptor files, parent links',
  probe: probeVmdk,
  capabilities: {
    create: true,
    write: true,
    backing: true,
    internalSnapshots: false,
    check: true,
    compression: ['deflate'],
    encryption: [],
    resize: 'grow',
    concurrentWrites: false,
  },
  createOptions: vmdkCreateOptions,
  open: openVmdk,
  create: createVmdk,
  check: checkVmdk,
  measure: measureVmdk,
} satisfies FormatDriver;
