// Shared by the partition tests: sparse scratch images, a PartitionIo over a plain file (the engine's
// raw driver is not needed to test table codecs), and whether util-linux's tools are installed.

import { execFileSync } from 'node:child_process';
import { open } from 'node:fs/promises';
import type { PartitionIo } from '../../../../src/engine/partition/index.ts';
import { has as harnessHas, scratchDir as harnessScratchDir } from '../../../helpers/format-harness.ts';

/** True when `tool` runs from PATH, /usr/sbin or /sbin (format-harness's has). */
export const has = (tool: string): boolean => harnessHas(tool, true);

/** A fresh `vdisk-partition-*` scratch folder and its remover (format-harness's scratchDir). */
export const scratchDir = (): Promise<{ dir: string; cleanup: () => Promise<void> }> =>
  harnessScratchDir('partition');

/** A sparse file of `sizeBytes`, opened as PartitionIo; `close()` when done. */
export async function fileIo(
  path: string,
  sizeBytes?: number,
): Promise<PartitionIo & { close(): Promise<void> }> {
  const handle = await open(path, sizeBytes === undefined ? 'r+' : 'w+');
  if (sizeBytes !== undefined) await handle.truncate(sizeBytes);
  const size = (await handle.stat()).size;
  return {
    sizeBytes: size,
    async read(offsetBytes, buffer) {
      buffer.fill(0);
      await handle.read(buffer, 0, buffer.length, offsetBytes);
    },
    async write(offsetBytes, data) {
      await handle.write(data, 0, data.length, offsetBytes);
    },
    async flush() {
      await handle.datasync();
    },
    close: () => handle.close(),
  };
}

export interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
}

export interface SfdiskTable {
  label: 'dos' | 'gpt';
  id: string;
  firstlba?: number;
  lastlba?: number;
  partitions: SfdiskPartition[];
}

export function sfdiskJson(path: string): SfdiskTable {
  const text = execFileSync('sfdisk', ['--json', path], { encoding: 'utf8' });
  return (JSON.parse(text) as { partitiontable: SfdiskTable }).partitiontable;
}

export function sfdiskWrite(path: string, script: string): void {
  execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', path], {
    input: script,
    stdio: ['pipe', 'ignore', 'pipe'],
  });
}
