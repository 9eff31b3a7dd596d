// Bad and unusual qcow2 input: truncated headers, tables past EOF, absurd sizes, feature bits (unknown
// incompatible -> UnsupportedError naming the bit, corrupt -> no writes, autoclear cleared on a writable
// open), backing loops; plus a fast-check property mutating valid metadata. Never a crash, hang or huge allocation.

import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../../../src/engine/open.ts';
import { createWithDriver, scratchDir, tryOpenBytes } from '../../../../helpers/format-harness.ts';
import { fuzzHeaders } from '../../../../helpers/header-fuzz.ts';

describe('qcow2 bad input', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let pristine: Buffer;
  let smallClusters: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await scratchDir());
    const path = join(dir, 'pristine.qcow2');
    await createWithDriver('qcow2', path, 4 << 20, {});
    const device = await openImage(path);
    await device.write(100_000, new Uint8Array(200_000).fill(0x5a));
    await device.close();
    pristine = await readFile(path);
    smallClusters = join(dir, 'small.qcow2');
    await createWithDriver('qcow2', smallClusters, 1 << 20, { cluster_size: '512' });
    const small = await openImage(smallClusters);
    await small.write(3000, new Uint8Array(40_000).fill(0x33));
    await small.writeCompressed?.(65536, new Uint8Array(512).fill(1));
    await small.close();
  });
  afterAll(async () => cleanup());

  function mutated(edit: (bytes: Buffer) => void): Buffer {
    const bytes = Buffer.from(pristine);
    edit(bytes);
    return bytes;
  }

  it('reads back what it wrote (sanity)', async () => {
    expect(await tryOpenBytes(dir, 'qcow2', pristine)).toBeUndefined();
  });

  it('truncated header -> VDISK_EFORMAT', async () => {
    expect(await tryOpenBytes(dir, 'qcow2', pristine.subarray(0, 60))).toMatchObject({
      code: 'VDISK_EFORMAT',
    });
  });

  it('L1 table past the end of the file -> VDISK_ECORRUPT with its offset', async () => {
    const err = await tryOpenBytes(
      dir,
      'qcow2',
      mutated((bytes) => bytes.writeBigUInt64BE(1n << 40n, 40)),
    );
    expect(err).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: 2 ** 40 });
  });

  it('refcount table past the end of the file -> VDISK_ECORRUPT', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow2',
        mutated((bytes) => bytes.writeBigUInt64BE(1n << 30n, 48)),
      ),
    ).toMatchObject({ code: 'VDISK_ECORRUPT' });
  });

  it('absurd L1 and refcount table sizes are refused before allocating', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow2',
        mutated((bytes) => bytes.writeUInt32BE(0xffffffff, 36)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 36 });
    expect(
      await tryOpenBytes(
        dir,
        'qcow2',
        mutated((bytes) => bytes.writeUInt32BE(0xffffffff, 56)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 56 });
  });

  it('a virtual size the L1 table cannot cover -> VDISK_EFORMAT', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow2',
        mutated((bytes) => bytes.writeBigUInt64BE(1n << 50n, 24)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 36 });
  });

  it('cluster_bits out of range -> VDISK_EFORMAT at byte 20', async () => {
    for (const clusterBits of [8, 22, 0xffffffff]) {
      expect(
        await tryOpenBytes(
          dir,
          'qcow2',
          mutated((bytes) => bytes.writeUInt32BE(clusterBits, 20)),
        ),
      ).toMatchObject({ code: 'VDISK_EFORMAT', offsetBytes: 20 });
    }
  });

  it('an L2 table offset that is not cluster aligned -> VDISK_ECORRUPT on read', async () => {
    const l1Offset = Number(pristine.readBigUInt64BE(40));
    const err = await tryOpenBytes(
      dir,
      'qcow2',
      mutated((bytes) => bytes.writeUInt32BE(bytes.readUInt32BE(l1Offset + 4) + 512, l1Offset + 4)),
    );
    expect(err).toMatchObject({ code: 'VDISK_ECORRUPT', offsetBytes: l1Offset });
  });

  it('an unknown incompatible feature bit -> VDISK_ENOTSUP naming the bit', async () => {
    const err = await tryOpenBytes(
      dir,
      'qcow2',
      mutated((bytes) => bytes.writeBigUInt64BE(1n << 17n, 72)),
    );
    expect(err).toMatchObject({ code: 'VDISK_ENOTSUP', feature: 'incompatible feature bit 17' });
  });

  it('an external data file bit without the data file name extension -> VDISK_EFORMAT', async () => {
    expect(
      await tryOpenBytes(
        dir,
        'qcow2',
        mutated((bytes) => bytes.writeBigUInt64BE(1n << 2n, 72)),
      ),
    ).toMatchObject({ code: 'VDISK_EFORMAT' });
  });

  it('a corrupt image opens read-only but refuses a read-write open', async () => {
    const path = join(dir, 'corrupt.qcow2');
    await writeFile(
      path,
      mutated((bytes) => bytes.writeBigUInt64BE(2n, 72)),
    );
    const readOnly = await openImage(path, { readOnly: true });
    expect((await readOnly.info()).formatSpecific?.data.corrupt).toBe(true);
    await readOnly.close();
    await expect(openImage(path)).rejects.toMatchObject({ code: 'VDISK_ECORRUPT', fatal: true });
  });

  it('clears unknown autoclear bits when opened writable, keeps them read-only', async () => {
    const path = join(dir, 'autoclear.qcow2');
    await writeFile(
      path,
      mutated((bytes) => bytes.writeBigUInt64BE((1n << 5n) | 1n, 88)),
    );
    await (await openImage(path, { readOnly: true })).close();
    expect((await readFile(path)).readBigUInt64BE(88)).toBe(33n);
    await (await openImage(path)).close();
    expect((await readFile(path)).readBigUInt64BE(88)).toBe(0n);
  });

  it('a backing chain that loops back -> VDISK_EINVAL', async () => {
    const a = join(dir, 'loop-a.qcow2');
    const b = join(dir, 'loop-b.qcow2');
    await createWithDriver('qcow2', a, 1 << 20, {}, { file: 'loop-b.qcow2', format: 'qcow2' });
    await createWithDriver('qcow2', b, 1 << 20, {}, { file: 'loop-a.qcow2', format: 'qcow2' });
    await expect(openImage(a, { readOnly: true })).rejects.toMatchObject({ code: 'VDISK_EINVAL' });
  });

  it('compressed descriptors pointing at garbage -> VDISK_ECORRUPT, not a crash', async () => {
    const path = join(dir, 'garbage-compressed.qcow2');
    await copyFile(smallClusters, path);
    const device = await openImage(path, { readOnly: true });
    const extents = await device.blockStatus(65536, 512);
    await device.close();
    expect(extents[0]?.compressed).toBe(true);
    // Overwrite the compressed payload (the last bytes of the file) with junk.
    const bytes = await readFile(path);
    bytes.fill(0xff, bytes.length - 64);
    const err = await tryOpenBytes(dir, 'qcow2', bytes, 'junk.qcow2');
    expect(err === undefined || (err as { code?: string }).code === 'VDISK_ECORRUPT').toBe(true);
  });

  it('property: mutated headers open, read, or fail with a VdiskError', async () => {
    const copy = join(dir, 'pristine-copy.qcow2');
    await writeFile(copy, pristine);
    await fuzzHeaders({ pristinePath: copy, format: 'qcow2', dir, metadataBytes: 512, numRuns: 120 });
  });

  it('property: mutated tables (512-byte clusters: header, refcounts, L1, L2, data) never crash', async () => {
    await fuzzHeaders({
      pristinePath: smallClusters,
      format: 'qcow2',
      dir,
      metadataBytes: 8192,
      numRuns: 150,
      seed: 99,
    });
  });
});
