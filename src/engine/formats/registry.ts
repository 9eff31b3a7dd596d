// The one place that says which formats exist and what each can do. docs/formats.md is generated
// from this table (scripts/generate-docs.ts) and a test fails when it is stale.
// Each format's driver record is the only export of its file or folder; add it here, once.

import type { BlockDevice } from '../block-device.ts';
import { UnsupportedError } from '../errors.ts';
import type { FormatDriver } from './driver.ts';
import { bochsDriver } from './bochs.ts';
import { cloopDriver } from './cloop.ts';
import { qcow2Driver } from './qcow2/driver.ts';
import { cowDriver } from './cow.ts';
import { dmgDriver } from './dmg/driver.ts';
import { luksDriver } from './luks/driver.ts';
import { parallelsDriver } from './parallels/driver.ts';
import { qcowDriver } from './qcow/driver.ts';
import { qedDriver } from './qed/driver.ts';
import { rawDriver } from './raw.ts';
import { vhdxDriver } from './vhdx/driver.ts';
import { vdiDriver } from './vdi/driver.ts';
import { vmdkDriver } from './vmdk/driver.ts';
import { vpcDriver } from './vpc/driver.ts';

export const formatRegistry: readonly FormatDriver[] = [
  // (drivers are listed here, raw last: it is the probe of last resort)
  bochsDriver,
  cloopDriver,
  qcowDriver,
  qedDriver,
  parallelsDriver,
  vhdxDriver,
  dmgDriver,
  cowDriver,
  luksDriver,
  vmdkDriver,
  vdiDriver,
  vpcDriver,
  qcow2Driver,
  rawDriver,
];

/** The driver for a qemu format name (`-f`/`-O`); throws UnsupportedError naming the known ones. */
export function findDriver(name: string): FormatDriver {
  const driver = formatRegistry.find((candidate) => candidate.name === name);
  if (!driver) {
    throw new UnsupportedError({
      format: name,
      feature: 'format',
      message: `Unknown file format '${name}' (known: ${formatRegistry.map((d) => d.name).join(', ')})`,
    });
  }
  return driver;
}

/** The driver whose probe scores highest on the file's first bytes; raw scores 1, so it wins only alone. */
export function probeDriver(head: Uint8Array, fileName: string): FormatDriver | undefined {
  let best: FormatDriver | undefined;
  let bestScore = 0;
  for (const driver of formatRegistry) {
    const score = driver.probe(head, fileName);
    if (score > bestScore) {
      best = driver;
      bestScore = score;
    }
  }
  return best;
}

/**
 * True when the driver that opened `device` declares `concurrentWrites`; devices no registered driver
 * names (a concatenation, a test double) answer false, the safe side.
 */
export function takesConcurrentWrites(device: BlockDevice): boolean {
  const driver = formatRegistry.find((candidate) => candidate.name === device.formatName);
  return driver?.capabilities.concurrentWrites ?? false;
}
