// Persistent dirty bitmaps made by `qemu-img bitmap` stay valid when vdisk writes: qemu-img check stays
// clean (no leaked bitmap clusters), info lists them with the same flags, and qemu-nbd -B exports them
// with exactly the granules vdisk wrote marked dirty (disabled bitmaps untouched). A crash after any
// write leaves no corruption; broken directories are refused with the offset.

import { spawn } from 'node:child_process';
import { copyFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/engine/block-device.ts';
import { NodeHostFile } from '../../src/engine/io/host-file.ts';
import { openImage } from '../../src/engine/open.ts';
import { CuttingFile } from '../helpers/cutting-file.ts';
import { hasTool, mustRun, scratch, tool, vdisk, warnMissing } from './cli-helpers.ts';

const HAS_TOOLS = hasTool('qemu-img') && hasTool('qemu-io') && hasTool('qemu-nbd') && hasTool('nbdinfo');
warnMissing('qemu-nbd', 'bitmaps-qcow2.test.ts');
warnMissing('nbdinfo', 'bitmaps-qcow2.test.ts');

const MiB = 1024 * 1024;

interface DirtyRun {
  start: number;
  length: number;
}

/** The dirty runs of bitmap `name` as qemu-nbd exports it (`qemu:dirty-bitmap:NAME`). */
async function dirtyRuns(image: string, name: string, dir: string): Promise<DirtyRun[]> {
  const socket = join(dir, `nbd-${process.pid}-${Math.random().toString(16).slice(2)}.sock`);
  const server = spawn('qemu-nbd', ['-r', '-t', '-k', socket, '-B', name, '-f', 'qcow2', image], {
    stdio: 'ignore',
  });
  try {
    for (let attempt = 0; attempt < 100; attempt++) {
      const result = tool('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, `nbd+unix:///?socket=${socket}`]);
      if (result.code === 0) {
        return result.stdout
          .trim()
          .split('\n')
          .map((line) => line.trim().split(/\s+/))
          .filter((fields) => fields[3] === 'dirty')
          .map((fields) => ({ start: Number(fields[0]), length: Number(fields[1]) }));
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`qemu-nbd did not serve ${image}`);
  } finally {
    server.kill();
  }
}

function bitmapInfo(image: string): unknown {
  const info = JSON.parse(mustRun('qemu-img', ['info', '--output=json', image])) as {
    'format-specific': { data: { bitmaps?: unknown } };
  };
  return info['format-specific'].data.bitmaps;
}

describe.skipIf(!HAS_TOOLS)('qcow2 persistent bitmaps kept valid by vdisk writes', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const path = (name: string): string => join(dir, name);

  beforeAll(async () => {
    ({ dir, cleanup } = await scratch('bitmaps-qcow2'));
    // b0: enabled, 64 KiB granules; b1: enabled, 128 KiB; b2: disabled. qemu dirties 0-1M in b0 and b1.
    mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', path('orig.qcow2'), '64M']);
    mustRun('qemu-img', ['bitmap', '--add', path('orig.qcow2'), 'b0']);
    mustRun('qemu-img', ['bitmap', '--add', '-g', '128k', path('orig.qcow2'), 'b1']);
    mustRun('qemu-io', ['-c', 'write -P 0x11 0 1M', path('orig.qcow2')]);
    mustRun('qemu-img', ['bitmap', '--add', '--disable', path('orig.qcow2'), 'b2']);
  });
  afterAll(async () => cleanup?.());

  /** vdisk's writes: data at 10M (100k), 1k around 40M+69000, zeroes at 50M, a discard at 60M. */
  const workload = async (device: BlockDevice): Promise<void> => {
    await device.write(10 * MiB, Buffer.alloc(100 * 1024, 7));
    await device.write(40 * MiB + 68608, Buffer.alloc(1024, 9));
    await device.writeZeroes(50 * MiB, 4096);
    await device.discard(60 * MiB, 2 * MiB);
  };

  it('marks exactly the written granules dirty, keeps flags, check clean, disabled bitmap untouched', async () => {
    await copyFile(path('orig.qcow2'), path('written.qcow2'));
    const device = await openImage(path('written.qcow2'));
    await workload(device);
    await device.close();
    const check = tool('qemu-img', ['check', path('written.qcow2')]);
    expect(check.stdout).toContain('No errors were found on the image.');
    expect(check.code).toBe(0);
    expect(bitmapInfo(path('written.qcow2'))).toEqual(bitmapInfo(path('orig.qcow2')));
    expect(await dirtyRuns(path('written.qcow2'), 'b0', dir)).toEqual([
      { start: 0, length: MiB },
      { start: 10 * MiB, length: 128 * 1024 },
      { start: 40 * MiB + 65536, length: 65536 },
      { start: 50 * MiB, length: 65536 },
      { start: 60 * MiB, length: 2 * MiB },
    ]);
    expect(await dirtyRuns(path('written.qcow2'), 'b1', dir)).toEqual([
      { start: 0, length: MiB },
      { start: 10 * MiB, length: 128 * 1024 },
      { start: 40 * MiB, length: 128 * 1024 },
      { start: 50 * MiB, length: 128 * 1024 },
      { start: 60 * MiB, length: 2 * MiB },
    ]);
    expect(await dirtyRuns(path('written.qcow2'), 'b2', dir)).toEqual([]);
    // qemu-img convert --bitmaps copies them on, so they are usable by qemu's own tools.
    mustRun('qemu-img', ['convert', '--bitmaps', '-O', 'qcow2', path('written.qcow2'), path('copied.qcow2')]);
    expect(await dirtyRuns(path('copied.qcow2'), 'b0', dir)).toHaveLength(5);
  });

  it('lists bitmaps in vdisk info exactly as qemu-img info does', async () => {
    const ours = JSON.parse((await vdisk(['info', '--output=json', path('orig.qcow2')])).stdout) as {
      'format-specific': unknown;
    };
    const theirs = JSON.parse(mustRun('qemu-img', ['info', '--output=json', path('orig.qcow2')])) as {
      'format-specific': unknown;
    };
    expect(ours['format-specific']).toEqual(theirs['format-specific']);
  });

  it('keeps bitmap clusters through vdisk check -r, snapshots and revert (revert dirties everything)', async () => {
    await copyFile(path('orig.qcow2'), path('snap.qcow2'));
    expect((await vdisk(['check', '-r', 'all', path('snap.qcow2')])).code).toBe(0);
    expect((await vdisk(['snapshot', '-c', 's1', path('snap.qcow2')])).code).toBe(0);
    const device = await openImage(path('snap.qcow2'));
    await device.write(5 * MiB, Buffer.alloc(4096, 1));
    await device.close();
    expect((await vdisk(['snapshot', '-a', 's1', path('snap.qcow2')])).code).toBe(0);
    const check = tool('qemu-img', ['check', path('snap.qcow2')]);
    expect(check.code).toBe(0);
    expect(check.stdout).toContain('No errors were found on the image.');
    expect(await dirtyRuns(path('snap.qcow2'), 'b0', dir)).toEqual([{ start: 0, length: 64 * MiB }]);
    expect(await dirtyRuns(path('snap.qcow2'), 'b2', dir)).toEqual([]);
    const resized = await vdisk(['resize', path('snap.qcow2'), '+1M']);
    expect(resized.code).toBe(1);
    expect(resized.stderr).toContain('persistent bitmaps');
  });

  it('leaves no corruption when the writes are cut after any write', async () => {
    let total = 0;
    for (let cut = 0; ; cut++) {
      const image = path(`cut-${cut}.qcow2`);
      await copyFile(path('orig.qcow2'), image);
      let cutting: CuttingFile | undefined;
      const device = await openImage(image, {
        openFile: async (filePath, readOnly) => {
          const file = await NodeHostFile.open(filePath, { readOnly });
          cutting = readOnly ? undefined : new CuttingFile(file, cut);
          return cutting ?? file;
        },
      });
      await workload(device).catch((err: unknown) => {
        if (!cutting?.isCut) throw err;
      });
      await device.close().catch((err: unknown) => {
        if (!cutting?.isCut) throw err;
      });
      const check = tool('qemu-img', ['check', '--output=json', image]);
      const report = JSON.parse(check.stdout) as { corruptions?: number };
      expect({ cut, code: check.code === 3 ? 0 : check.code, corruptions: report.corruptions ?? 0 }).toEqual({
        cut,
        code: 0,
        corruptions: 0,
      });
      // Either the bitmaps were stored (in-use cleared) or they are still marked in use (inconsistent).
      const flags = (bitmapInfo(image) as Array<{ name: string; flags: string[] }>).find(
        (bitmap) => bitmap.name === 'b0',
      )?.flags;
      expect(flags?.includes('auto')).toBe(true);
      if (!cutting?.isCut) {
        total = cut;
        expect(flags).toEqual(['auto']);
        break;
      }
    }
    expect(total).toBeGreaterThan(10);
  });

  it('refuses a bitmap directory outside the file and absurd table sizes, naming the offset', async () => {
    // The bitmaps extension follows the 112-byte header: type, length, then nb_bitmaps, reserved,
    // directory size, directory offset.
    const findExtension = async (image: string): Promise<number> => {
      const handle = await open(image, 'r');
      try {
        const head = Buffer.alloc(4096);
        await handle.read(head, 0, head.length, 0);
        for (let at = 112; at + 8 <= head.length; ) {
          const type = head.readUInt32BE(at);
          if (type === 0x23852875) return at + 8;
          if (type === 0) break;
          at += 8 + Math.ceil(head.readUInt32BE(at + 4) / 8) * 8;
        }
        throw new Error('no bitmaps extension');
      } finally {
        await handle.close();
      }
    };
    const patch = async (
      image: string,
      offsetBytes: number,
      value: bigint,
      widthBytes: 4 | 8,
    ): Promise<void> => {
      const handle = await open(image, 'r+');
      const field = Buffer.alloc(widthBytes);
      if (widthBytes === 8) field.writeBigUInt64BE(value);
      else field.writeUInt32BE(Number(value));
      await handle.write(field, 0, widthBytes, offsetBytes);
      await handle.close();
    };
    await copyFile(path('orig.qcow2'), path('far.qcow2'));
    const extension = await findExtension(path('far.qcow2'));
    await patch(path('far.qcow2'), extension + 16, 1n << 40n, 8);
    await expect(openImage(path('far.qcow2'), { readOnly: true })).rejects.toMatchObject({
      code: 'VDISK_ECORRUPT',
      offsetBytes: 2 ** 40,
    });
    const info = await vdisk(['info', path('far.qcow2')]);
    expect(info.code).toBe(1);
    expect(info.stderr).toMatch(/bitmap directory .* outside the file/);

    await copyFile(path('orig.qcow2'), path('huge.qcow2'));
    const directoryOffset = Number(
      (
        await (async () => {
          const handle = await open(path('huge.qcow2'), 'r');
          const field = Buffer.alloc(8);
          await handle.read(field, 0, 8, extension + 16);
          await handle.close();
          return field;
        })()
      ).readBigUInt64BE(0),
    );
    // Entry 0's bitmap_table_size: 0xffffffff entries.
    await patch(path('huge.qcow2'), directoryOffset + 8, 0xffffffffn, 4);
    await expect(openImage(path('huge.qcow2'))).rejects.toMatchObject({
      code: 'VDISK_ECORRUPT',
      offsetBytes: directoryOffset,
    });
    const check = await vdisk(['check', path('huge.qcow2')]);
    expect(check.code).toBe(2);
  });
});
