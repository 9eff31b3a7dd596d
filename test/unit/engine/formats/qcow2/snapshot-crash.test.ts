// Crash consistency of internal snapshot create, delete and apply: a HostFile that silently stops
// persisting after its N-th write is swept over each (every N from 0 to the operation's last write).
// Each operation writes its new metadata as copies in clusters the image leaves free and switches to
// them with one write of the header's first sector (metadata-commit.ts), so every cut must leave either
// the old image exactly (every cluster it uses unchanged) or the new state, in that order as N grows,
// and `qemu-img check` must find nothing at all: no corruption (COPIED flags included) and no leak.
// Every snapshot listed, and the active image, must read as the state says. The images have small
// clusters (several L2 tables; with 512-byte clusters and 64-bit refcounts, dozens of refcount
// blocks), data shared with a snapshot, data the active image rewrote after it, zero and compressed
// clusters.

import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../../../../src/engine/block-device.ts';
import { loadImage } from '../../../../../src/engine/formats/qcow2/load.ts';
import { NodeHostFile } from '../../../../../src/engine/io/host-file.ts';
import { runCutOperation } from '../../../../helpers/cutting-file.ts';
import { has, run, runStatus, scratchDir } from '../../../../helpers/format-harness.ts';

const HAS_QEMU = has('qemu-img') && has('qemu-io');
if (!HAS_QEMU)
  console.warn('SKIPPED qcow2 snapshot-crash.test.ts: qemu-img not found (apt-get install qemu-utils)');

type Operation = (device: BlockDevice) => Promise<void>;

describe.skipIf(!HAS_QEMU)('qcow2 snapshot operations survive a crash after any write', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir('snapcrash'));
  });
  afterAll(async () => cleanup());

  /**
   * A 6 MiB image (4 KiB clusters unless `options` say otherwise) with the snapshots `names`, the
   * active image rewritten after each.
   */
  function build(name: string, names: string[], options = 'cluster_size=4096'): string {
    const path = join(dir, `${name}.qcow2`);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, path, '6M']);
    run('qemu-io', [
      '-f',
      'qcow2',
      ...['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 512k', '-c', 'write -z 1M 64k'],
      ...['-c', 'write -c -P 0x33 5M 64k'],
      path,
    ]);
    names.forEach((snapshot, index) => {
      run('qemu-img', ['snapshot', '-c', snapshot, path]);
      run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${44 + index} ${512 + index * 64}k 256k`, path]);
    });
    return path;
  }

  /** Guest bytes of the active image, or of snapshot `snapshot`, as qemu-img reads them. */
  async function content(path: string, snapshot?: string): Promise<Buffer> {
    const out = join(dir, 'content.raw');
    const select = snapshot === undefined ? [] : ['-l', `snapshot.name=${snapshot}`];
    run('qemu-img', ['convert', '-f', 'qcow2', ...select, '-O', 'raw', path, out]);
    return readFile(out);
  }

  /** The clusters `path` uses (refcount > 0), as the engine reads its refcounts. */
  async function usedClusters(path: string): Promise<{ clusterSizeBytes: number; clusters: number[] }> {
    const file = await NodeHostFile.open(path, { readOnly: true });
    try {
      const { refcounts, clusterSizeBytes } = await loadImage({ file, path, readOnly: true }, async () => {});
      const clusters: number[] = [];
      const count = Math.ceil((await file.sizeBytes()) / clusterSizeBytes);
      for (let cluster = 0; cluster < count; cluster++)
        if ((await refcounts.get(cluster)) > 0) clusters.push(cluster);
      expect(clusters.length).toBeGreaterThan(10);
      return { clusterSizeBytes, clusters };
    } finally {
      await file.close();
    }
  }

  function snapshotNames(path: string): string[] {
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as {
      snapshots?: Array<{ name: string }>;
    };
    return (info.snapshots ?? []).map((entry) => entry.name);
  }

  const runCut = (path: string, cut: number, operation: Operation): Promise<number> =>
    runCutOperation(path, cut, operation);

  /**
   * Runs `operation` cut after every write. `states` is the old state and the new one: snapshot
   * names, and the contents the active image may have (keys of `expected`, as the snapshots' names).
   */
  async function sweep(
    pristine: string,
    operation: Operation,
    states: Array<{ names: string[]; active: string[] }>,
    expected: Record<string, Buffer>,
  ): Promise<void> {
    const dry = join(dir, 'dry.qcow2');
    await copyFile(pristine, dry);
    const totalWrites = await runCut(dry, Number.POSITIVE_INFINITY, operation);
    expect(totalWrites).toBeGreaterThan(2);
    const original = await readFile(pristine);
    const used = await usedClusters(pristine);
    let seenNew = false;
    for (let cut = 0; cut <= totalWrites; cut++) {
      const path = join(dir, 'cut.qcow2');
      await copyFile(pristine, path);
      await runCut(path, cut, operation);
      const check = runStatus('qemu-img', ['check', path]);
      // qemu-img check prints what it finds on stderr; exit 2 means corruptions, 3 leaks.
      expect({
        cut,
        status: check.status,
        errors: `${check.stdout}\n${check.stderr}`.match(/^(ERROR|Leaked).*$/gm),
      }).toEqual({
        cut,
        status: 0,
        errors: null,
      });
      // Until the commit (the header's first sector) every cluster the original uses is untouched:
      // the new tables went to clusters it leaves free.
      const bytes = await readFile(path);
      const isOld = bytes.subarray(0, 512).equals(original.subarray(0, 512));
      expect(isOld || cut > 0, 'cut 0 leaves the original').toBe(true);
      if (!isOld) seenNew = true;
      expect(isOld && seenNew, `cut ${cut}: old state after the new one`).toBe(false);
      if (isOld) {
        const { clusterSizeBytes, clusters } = used;
        const changed = clusters.filter((cluster) => {
          const at = cluster * clusterSizeBytes;
          return !bytes
            .subarray(at, at + clusterSizeBytes)
            .equals(original.subarray(at, at + clusterSizeBytes));
        });
        expect(changed, `cut ${cut}: clusters of the original state written`).toEqual([]);
        // The original's clusters with free ones (refcount 0, check said so) written elsewhere read as
        // the original: read them once, at cut 0, and every state that is not the original.
        if (cut > 0) continue;
      }
      const names = snapshotNames(path);
      const state = states[isOld ? 0 : 1];
      expect(names, `cut ${cut}: snapshots`).toEqual(state?.names);
      const active = await content(path);
      expect(
        state?.active.some((key) => expected[key]?.equals(active)),
        `cut ${cut}: active content`,
      ).toBe(true);
      for (const name of names)
        expect((await content(path, name)).equals(expected[name] as Buffer), `cut ${cut}: ${name}`).toBe(
          true,
        );
    }
    expect(seenNew, 'the last cut shows the new state').toBe(true);
  }

  /** Sweeps create over an image that already has snapshot `old` (the old table is replaced). */
  async function sweepCreate(name: string, options?: string): Promise<void> {
    const pristine = build(name, ['old'], options);
    const expected = {
      old: await content(pristine, 'old'),
      new: await content(pristine),
      now: await content(pristine),
    };
    await sweep(
      pristine,
      async (device) => {
        await device.snapshots?.create('new');
      },
      [
        { names: ['old'], active: ['now'] },
        { names: ['old', 'new'], active: ['now'] },
      ],
      expected,
    );
  }

  /** Sweeps the delete of the only snapshot, `old`, named by `id` (an id or the name). */
  async function sweepDeleteOnly(name: string, id: string, options?: string): Promise<void> {
    const pristine = build(name, ['old'], options);
    const expected = { old: await content(pristine, 'old'), now: await content(pristine) };
    await sweep(
      pristine,
      async (device) => {
        await device.snapshots?.delete(id);
      },
      [
        { names: ['old'], active: ['now'] },
        { names: [], active: ['now'] },
      ],
      expected,
    );
  }

  it('create, over an image that already has a snapshot (the old table is replaced)', async () => {
    await sweepCreate('create');
  }, 120_000);

  it('delete of one snapshot of two', async () => {
    const pristine = build('delete2', ['old', 'mid']);
    const expected = {
      old: await content(pristine, 'old'),
      mid: await content(pristine, 'mid'),
      now: await content(pristine),
    };
    await sweep(
      pristine,
      async (device) => {
        await device.snapshots?.delete('1');
      },
      [
        { names: ['old', 'mid'], active: ['now'] },
        { names: ['mid'], active: ['now'] },
      ],
      expected,
    );
  }, 120_000);

  it('delete of the only snapshot (COPIED comes back on the active tables)', async () => {
    await sweepDeleteOnly('delete1', '1');
  }, 120_000);

  it('apply (revert to a snapshot)', async () => {
    const pristine = build('apply', ['old']);
    const expected = { old: await content(pristine, 'old'), now: await content(pristine) };
    await sweep(
      pristine,
      async (device) => {
        await device.snapshots?.apply('old');
      },
      [
        { names: ['old'], active: ['now'] },
        { names: ['old'], active: ['old'] },
      ],
      expected,
    );
  }, 120_000);

  // 512-byte clusters with 64-bit refcounts: a refcount block per 64 clusters, so the commit copies
  // dozens of blocks, and the blocks counting the replaced blocks, in one run past the end of the file.
  const manyBlocks = 'cluster_size=512,refcount_bits=64';

  it('create with a refcount block per 32 KiB', async () => {
    await sweepCreate('create-blocks', manyBlocks);
  }, 120_000);

  it('delete with a refcount block per 32 KiB', async () => {
    await sweepDeleteOnly('delete-blocks', 'old', manyBlocks);
  }, 120_000);
});
