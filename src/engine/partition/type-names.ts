// Partition type codes: MBR type bytes and GPT type GUIDs, their readable names (as fdisk prints
// them), and the short aliases a layout may use (`linux`, `efi`, `swap`, ...). Sources: util-linux
// libfdisk's dos and gpt type tables; UEFI 2.10 section 5.3.3 for the EFI System GUID.

import { InvalidOptionError } from '../errors.ts';
import { isGuidText } from './guid.ts';

/** MBR type byte -> name (the common subset). */
export const MBR_TYPE_NAMES: ReadonlyMap<number, string> = new Map([
  [0x01, 'FAT12'],
  [0x05, 'Extended'],
  [0x06, 'FAT16'],
  [0x07, 'HPFS/NTFS/exFAT'],
  [0x0b, 'W95 FAT32'],
  [0x0c, 'W95 FAT32 (LBA)'],
  [0x0e, 'W95 FAT16 (LBA)'],
  [0x0f, "W95 Ext'd (LBA)"],
  [0x82, 'Linux swap / Solaris'],
  [0x83, 'Linux'],
  [0x85, 'Linux extended'],
  [0x8e, 'Linux LVM'],
  [0xee, 'GPT'],
  [0xef, 'EFI (FAT-12/16/32)'],
  [0xfd, 'Linux raid autodetect'],
]);

/** MBR type bytes that start an EBR chain. */
export const MBR_EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85]);

export const GPT_TYPE_NAMES: Readonly<Record<string, string>> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
};

/** Layout aliases -> [MBR byte, GPT GUID]. */
const ALIASES: Readonly<Record<string, readonly [number, string]>> = {
  linux: [0x83, '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  ext4: [0x83, '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  xfs: [0x83, '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  btrfs: [0x83, '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  swap: [0x82, '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F'],
  efi: [0xef, 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'],
  vfat: [0x0c, 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7'],
  fat32: [0x0c, 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7'],
  ntfs: [0x07, 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7'],
  data: [0x0c, 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7'],
  lvm: [0x8e, 'E6D6D379-F507-44C2-A23C-238F2A3DF928'],
  raid: [0xfd, 'A19D880F-05FC-4D3B-A006-743F0F84911E'],
  'bios-boot': [0xef, '21686148-6449-6E6F-744E-656564454649'],
};

export function mbrTypeName(typeByte: number): string | undefined {
  return MBR_TYPE_NAMES.get(typeByte);
}

export function gptTypeName(guid: string): string | undefined {
  return GPT_TYPE_NAMES[guid.toUpperCase()];
}

/** A layout's `type` for an MBR: an alias, `0x83`, or `83`. Throws InvalidOptionError. */
export function resolveMbrType(type: string): number {
  const alias = ALIASES[type.toLowerCase()];
  if (alias) return alias[0];
  const match = /^(?:0x)?([0-9a-f]{1,2})$/i.exec(type);
  if (match?.[1]) {
    const value = Number.parseInt(match[1], 16);
    if (value !== 0 && value !== 0xee && !MBR_EXTENDED_TYPES.has(value)) return value;
  }
  throw new InvalidOptionError({
    option: 'layout.partitions.type',
    value: type,
    message: `Invalid MBR partition type '${type}': use a type byte (83, 0x0c) or one of ${Object.keys(ALIASES).join(', ')}`,
  });
}

/** A layout's `type` for a GPT: an alias or a type GUID. Throws InvalidOptionError. */
export function resolveGptType(type: string): string {
  const alias = ALIASES[type.toLowerCase()];
  if (alias) return alias[1];
  if (isGuidText(type) && !/^0{8}-0{4}-0{4}-0{4}-0{12}$/.test(type)) return type.toUpperCase();
  throw new InvalidOptionError({
    option: 'layout.partitions.type',
    value: type,
    message: `Invalid GPT partition type '${type}': use a type GUID or one of ${Object.keys(ALIASES).join(', ')}`,
  });
}
