// VMDK text descriptor: `key=value` lines (CID, parentCID, createType, parentFileNameHint, ddb.*) and
// extent lines (`RW 2048 SPARSE "name.vmdk" [offset]`), parsed into a record and written back in the
// template qemu 7.2 uses. Spec: VMware "Virtual Disk Format 1.1", "The Descriptor File".

import { ImageFormatError } from '../../errors.ts';

/** Longest descriptor vdisk reads (qemu's limit is 1 MiB). */
export const MAX_DESCRIPTOR_BYTES = 1024 * 1024;
/** Most extent lines vdisk accepts (a 2 TiB twoGbMaxExtent disk has 1024). */
export const MAX_EXTENTS = 65536;

export type ExtentType =
  | 'FLAT'
  | 'SPARSE'
  | 'ZERO'
  | 'VMFS'
  | 'VMFSSPARSE'
  | 'VMFSRDM'
  | 'VMFSRAW'
  | 'SESPARSE';

export interface ExtentLine {
  access: 'RW' | 'RDONLY' | 'NOACCESS';
  sectors: number;
  type: ExtentType;
  /** As written in the descriptor (relative to its folder unless absolute); empty for ZERO. */
  fileName: string;
  /** Start inside a FLAT file, in sectors. */
  offsetSectors: number;
}

export interface Descriptor {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint: string | undefined;
  extents: ExtentLine[];
  /** ddb.* entries, keys without quotes, values unquoted. */
  ddb: Map<string, string>;
}

const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;
const KNOWN_TYPES = new Set([
  'FLAT',
  'SPARSE',
  'ZERO',
  'VMFS',
  'VMFSSPARSE',
  'VMFSRDM',
  'VMFSRAW',
  'SESPARSE',
]);

function unquote(value: string): string {
  const trimmed = value.trim();
  return trimmed.length >= 2 && trimmed.startsWith('"') && trimmed.endsWith('"')
    ? trimmed.slice(1, -1)
    : trimmed;
}

/** True when the text looks like a descriptor (what qemu's vmdk_probe accepts for a text file). */
export function looksLikeDescriptor(text: string): boolean {
  return (
    /^\s*#\s*Disk DescriptorFile/m.test(text) ||
    (/^\s*version\s*=\s*\d/m.test(text) && /^\s*createType\s*=/m.test(text))
  );
}

/** A descriptor with no lines: no CIDs (0xffffffff), no create type, parent or extents. */
export function emptyDescriptor(): Descriptor {
  return {
    cid: 0xffffffff,
    parentCid: 0xffffffff,
    createType: '',
    parentFileNameHint: undefined,
    extents: [],
    ddb: new Map(),
  };
}

/** Parses descriptor text; throws ImageFormatError naming the bad line. */
export function parseDescriptor(text: string, file: string, fileOffsetBytes = 0): Descriptor {
  const descriptor = emptyDescriptor();
  for (const rawLine of text.split('\n')) {
    const line = rawLine.replace(/\r$/, '').replace(/\0.*$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const extent = EXTENT_LINE.exec(line);
    if (extent) {
      const [, access, sectors, type, fileName, offset] = extent;
      if (!KNOWN_TYPES.has(type!)) {
        throw new ImageFormatError({
          file,
          offsetBytes: fileOffsetBytes,
          message: `Invalid extent line: ${line}`,
        });
      }
      const sectorCount = Number(sectors);
      if (
        !Number.isSafeInteger(sectorCount) ||
        sectorCount <= 0 ||
        (type !== 'ZERO' && fileName === undefined)
      ) {
        throw new ImageFormatError({
          file,
          offsetBytes: fileOffsetBytes,
          message: `Invalid extent line: ${line}`,
        });
      }
      if (descriptor.extents.length >= MAX_EXTENTS) {
        throw new ImageFormatError({
          file,
          offsetBytes: fileOffsetBytes,
          message: `more than ${MAX_EXTENTS} extents`,
        });
      }
      descriptor.extents.push({
        access: access as ExtentLine['access'],
        sectors: sectorCount,
        type: type as ExtentType,
        fileName: fileName ?? '',
        offsetSectors: offset === undefined ? 0 : Number(offset),
      });
      continue;
    }
    const equals = line.indexOf('=');
    if (equals < 0) continue;
    const key = line.slice(0, equals).trim();
    const value = unquote(line.slice(equals + 1));
    if (key === 'CID') descriptor.cid = Number.parseInt(value, 16) >>> 0;
    else if (key === 'parentCID') descriptor.parentCid = Number.parseInt(value, 16) >>> 0;
    else if (key === 'createType') descriptor.createType = value;
    else if (key === 'parentFileNameHint') descriptor.parentFileNameHint = value;
    else if (key.startsWith('ddb.')) descriptor.ddb.set(key, value);
  }
  return descriptor;
}

/** One extent line as qemu writes it. */
function extentLineText(extent: ExtentLine): string {
  return extent.type === 'ZERO'
    ? `${extent.access} ${extent.sectors} ZERO\n`
    : `${extent.access} ${extent.sectors} ${extent.type} "${extent.fileName}"${extent.type === 'FLAT' ? ` ${extent.offsetSectors}` : ''}\n`;
}

/**
 * Replaces a descriptor's extent lines with `extents` (where the first one stood) and its
 * ddb.geometry.cylinders with `cylinders`, keeping every other line as it was.
 */
export function rewriteDescriptorExtents(text: string, extents: ExtentLine[], cylinders: number): string {
  const out: string[] = [];
  let placed = false;
  for (const rawLine of text.split(/(?<=\n)/)) {
    const line = rawLine.replace(/\r?\n$/, '').trim();
    if (EXTENT_LINE.test(line)) {
      if (!placed) out.push(extents.map(extentLineText).join(''));
      placed = true;
      continue;
    }
    if (/^ddb\.geometry\.cylinders\s*=/.test(line)) {
      out.push(`ddb.geometry.cylinders = "${cylinders}"\n`);
      continue;
    }
    out.push(rawLine);
  }
  if (!placed) out.push(extents.map(extentLineText).join(''));
  return out.join('');
}

export interface DescriptorText {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  hwVersion: string;
  cylinders: number;
  heads: number;
  adapterType: string;
  toolsVersion: string;
}

/** The descriptor qemu-img create writes (same lines, same order). */
export function buildDescriptor(text: DescriptorText): string {
  const hex = (value: number) => (value >>> 0).toString(16);
  const extentLines = text.extents.map(extentLineText).join('');
  return (
    '# Disk DescriptorFile\n' +
    'version=1\n' +
    `CID=${hex(text.cid)}\n` +
    `parentCID=${hex(text.parentCid)}\n` +
    `createType="${text.createType}"\n` +
    (text.parentFileNameHint === undefined ? '' : `parentFileNameHint="${text.parentFileNameHint}"\n`) +
    '\n' +
    '# Extent description\n' +
    extentLines +
    '\n' +
    '# The Disk Data Base\n' +
    '#DDB\n' +
    '\n' +
    `ddb.virtualHWVersion = "${text.hwVersion}"\n` +
    `ddb.geometry.cylinders = "${text.cylinders}"\n` +
    `ddb.geometry.heads = "${text.heads}"\n` +
    'ddb.geometry.sectors = "63"\n' +
    `ddb.adapterType = "${text.adapterType}"\n` +
    `ddb.toolsVersion = "${text.toolsVersion}"\n`
  );
}
