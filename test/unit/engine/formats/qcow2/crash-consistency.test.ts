// Crash consistency of the qcow2 write path: a HostFile that silently stops persisting after its N-th
// write (later writes dropped, syncs no-ops) is swept over a seeded workload. Every resulting file must pass
// `qemu-img check` without corruptions (leaks allowed) and hold every write flushed before the cut.

import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../../src/engine/block-device.ts';
import { defineSecret } from '../../../../../src/engine/crypto/secrets.ts';
import { NodeHostFile } from '../../../../../src/engine/io/host-file.ts';
import { openImage } from '../../../../../src/engine/open.ts';
import {
  createWithDriver,
  has,
  prng,
  run,
  runStatus,
  scratchDir,
  seededBytes,
} from '../../../../helpers/format-harness.ts';
import { CuttingFile } from '../../../../helpers/cutting-file.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED qcow2 crash-consistency.test.ts: qemu-img not found (apt-get install qemu-utils)');

interface Outcome {
  /** Guest content when the last flush that completed before the cut returned. */
  flushed: Uint8Array;
  /** Clusters touched by any operation issued after that flush. */
  touchedAfterFlush: Set<number>;
  writes: number;
}

/** The workload: writes straddling clusters, zeroes, discards, compressed clusters, flushes. */
async function workload(
  device: BlockDevice,
  clusterSizeBytes: number,
  seed: number,
  isCut: () => boolean,
): Promise<Outcome> {
  const random = prng(seed);
  const sizeBytes = device.sizeBytes;
  const current = new Uint8Array(sizeBytes);
  await device.read(0, current);
  let flushed = current.slice();
  let touched = new Set<number>();
  const touch = (offsetBytes: number, lengthBytes: number): void => {
    for (
      let cluster = Math.floor(offsetBytes / clusterSizeBytes);
      cluster * clusterSizeBytes < offsetBytes + lengthBytes;
      cluster++
    )
      touched.add(cluster);
  };
  for (let step = 0; step < 60; step++) {
    const choice = random();
    const offsetBytes = Math.floor(random() * (sizeBytes - 1));
    const lengthBytes = Math.max(
      1,
      Math.min(sizeBytes - offsetBytes, Math.floor(random() * 3 * clusterSizeBytes)),
    );
    try {
      if (choice < 0.55) {
        const data = seededBytes(lengthBytes, seed * 977 + step);
        touch(offsetBytes, lengthBytes);
        await device.write(offsetBytes, data);
        current.set(data, offsetBytes);
      } else if (choice < 0.7) {
        touch(offsetBytes, lengthBytes);
        await device.writeZeroes(offsetBytes, lengthBytes, { mayUnmap: random() < 0.5 });
        current.fill(0, offsetBytes, offsetBytes + lengthBytes);
      } else if (choice < 0.8) {
        const start = Math.ceil(offsetBytes / clusterSizeBytes) * clusterSizeBytes;
        const end = Math.floor((offsetBytes + lengthBytes) / clusterSizeBytes) * clusterSizeBytes;
        if (end > start) {
          touch(start, end - start);
          await device.discard(start, end - start);
          current.fill(0, start, end);
        }
      } else if (choice < 0.88 && device.writeCompressed) {
        const start = Math.floor(offsetBytes / clusterSizeBytes) * clusterSizeBytes;
        const data = new Uint8Array(Math.min(clusterSizeBytes, sizeBytes - start)).fill(step + 1);
        touch(start, data.length);
        await device.writeCompressed(start, data);
        current.set(data, start);
      } else {
        await device.flush();
        if (!isCut()) {
          flushed = current.slice();
          touched = new Set();
        }
      }
    } catch (err) {
      // After the cut the driver may read back tables it believes it wrote: a dead process does nothing more.
      if (!isCut()) throw err;
      break;
    }
  }
  try {
    await device.close();
  } catch (err) {
    if (!isCut()) throw err;
  }
  if (!isCut()) {
    flushed = current.slice();
    touched = new Set();
  }
  return { flushed, touchedAfterFlush: touched, writes: 0 };
}

describe.skipIf(!HAS_QEMU)('qcow2 survives a crash after any write', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
  });
  afterAll(async () => cleanup());

  async function sweep(
    name: string,
    sizeBytes: number,
    options: Record<string, string>,
    clusterSizeBytes: number,
    withBacking: boolean,
  ): Promise<void> {
    // An encrypted image (issue 3) needs its key for every open and for qemu-img check.
    const encrypted = options['encrypt.format'] !== undefined;
    if (encrypted) defineSecret('sec0', Buffer.from('crash passphrase'));
    const driverOptions: Record<string, string> = encrypted ? { 'encrypt.key-secret': 'sec0' } : {};
    const checkArgs = (path: string): string[] =>
      encrypted
        ? [
            'check',
            '--object',
            'secret,id=sec0,data=crash passphrase',
            '--image-opts',
            `driver=qcow2,file.filename=${path},encrypt.key-secret=sec0`,
          ]
        : ['check', path];
    const pristine = join(dir, `${name}-pristine.qcow2`);
    if (withBacking) {
      const base = join(dir, `${name}-base.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(sizeBytes)]);
      run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x61 0 ${sizeBytes}`, base]);
      await createWithDriver('qcow2', pristine, sizeBytes, options, {
        file: `${name}-base.qcow2`,
        format: 'qcow2',
      });
    } else {
      await createWithDriver('qcow2', pristine, sizeBytes, options);
    }
    // A dry run counts the writes the workload issues.
    let totalWrites = 0;
    {
      const path = join(dir, `${name}-dry.qcow2`);
      await copyFile(pristine, path);
      let counter: CuttingFile | undefined;
      const device = await openImage(path, {
        driverOptions,
        openFile: async (filePath, readOnly) => {
          const file = await NodeHostFile.open(filePath, { readOnly });
          if (readOnly) return file;
          counter = new CuttingFile(file, Number.POSITIVE_INFINITY);
          return counter;
        },
      });
      await workload(device, clusterSizeBytes, 42, () => false);
      totalWrites = counter?.writeCount ?? 0;
    }
    expect(totalWrites).toBeGreaterThan(20);
    const stride = Math.max(1, Math.floor(totalWrites / 30));
    for (let cut = 0; cut <= totalWrites; cut += stride) {
      const path = join(dir, `${name}-cut.qcow2`);
      await copyFile(pristine, path);
      let cutting: CuttingFile | undefined;
      const device = await openImage(path, {
        driverOptions,
        openFile: async (filePath, readOnly) => {
          const file = await NodeHostFile.open(filePath, { readOnly });
          if (readOnly) return file;
          cutting = new CuttingFile(file, cut);
          return cutting;
        },
      });
      const outcome = await workload(device, clusterSizeBytes, 42, () => cutting?.isCut ?? false);
      const check = runStatus('qemu-img', [...checkArgs(path), '--output=json']);
      const report = JSON.parse(check.stdout || '{}') as { corruptions?: number; 'check-errors'?: number };
      const clean =
        (report.corruptions ?? 0) === 0 &&
        (report['check-errors'] ?? 0) === 0 &&
        (check.status === 0 || check.status === 3);
      // On failure, show qemu-img's own account of the damage.
      if (!clean)
        expect({
          cut,
          qemu: (({ stdout, stderr }) => stderr + stdout)(runStatus('qemu-img', checkArgs(path))),
        }).toEqual({ cut, qemu: 'clean' });
      const reopened = await openImage(path, { readOnly: true, driverOptions });
      const content = new Uint8Array(reopened.sizeBytes);
      await reopened.read(0, content);
      await reopened.close();
      for (let cluster = 0; cluster * clusterSizeBytes < sizeBytes; cluster++) {
        if (outcome.touchedAfterFlush.has(cluster)) continue;
        const start = cluster * clusterSizeBytes;
        const end = Math.min(sizeBytes, start + clusterSizeBytes);
        const same = Buffer.from(content.subarray(start, end)).equals(
          Buffer.from(outcome.flushed.subarray(start, end)),
        );
        if (!same) expect({ cut, cluster, same }).toEqual({ cut, cluster, same: true });
      }
    }
  }

  it('v3, 64 KiB clusters, over a backing file', () => sweep('v3', 1 << 20, {}, 65536, true), 120_000);
  it(
    '512-byte clusters, 2-bit refcounts (refcount blocks and table growth)',
    () => sweep('small', 256 * 1024, { cluster_size: '512', refcount_bits: '2' }, 512, false),
    120_000,
  );
  it(
    'extended_l2 over a backing file',
    () => sweep('extl2', 1 << 20, { extended_l2: 'on', cluster_size: '32768' }, 32768, true),
    120_000,
  );
  it('compat=0.10', () => sweep('v2', 1 << 20, { compat: '0.10' }, 65536, false), 120_000);
  it(
    'encrypt.format=luks over a backing file (data enciphered, LUKS header clusters kept)',
    () =>
      sweep(
        'luks',
        1 << 20,
        {
          'encrypt.format': 'luks',
          'encrypt.key-secret': 'sec0',
          'encrypt.iter-time': '1',
          cluster_size: '16384',
        },
        16384,
        true,
      ),
    180_000,
  );
});
