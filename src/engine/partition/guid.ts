// GUIDs as GPT stores them (UEFI 2.10 Appendix A): the first three fields little-endian, the last
// two big-endian ("mixed endian"); text form uppercase with dashes, as sfdisk and sgdisk print it.

import { randomUUID } from 'node:crypto';
import { InvalidOptionError } from '../errors.ts';

const GUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isGuidText(text: string): boolean {
  return GUID_TEXT.test(text);
}

/** 16 on-disk bytes -> `0FC63DAF-8483-4772-8E79-3D69D8477DE4`. */
export function decodeGuid(bytes: Uint8Array): string {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, 16);
  const hex = (from: number, to: number) => b.subarray(from, to).toString('hex');
  const reversed = (from: number, to: number) => Buffer.from(b.subarray(from, to)).reverse().toString('hex');
  return `${reversed(0, 4)}-${reversed(4, 6)}-${reversed(6, 8)}-${hex(8, 10)}-${hex(10, 16)}`.toUpperCase();
}

/** Text GUID -> 16 on-disk bytes; throws InvalidOptionError for a malformed GUID. */
export function encodeGuid(text: string, option = 'guid'): Buffer {
  if (!isGuidText(text))
    throw new InvalidOptionError({ option, value: text, message: `Invalid GUID '${text}'` });
  const parts = text.split('-');
  const field = (index: number) => Buffer.from(parts[index] ?? '', 'hex');
  return Buffer.concat([field(0).reverse(), field(1).reverse(), field(2).reverse(), field(3), field(4)]);
}

/** A fresh random (version 4) GUID, uppercase. */
export function randomGuid(): string {
  return randomUUID().toUpperCase();
}
