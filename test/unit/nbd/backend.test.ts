// The NBD backend's pure parts and ordering: zero runs become hole segments, chain status survives a
// device that answers with nothing, errors map to NBD values by code, and a FLUSH waits for the
// writes already running (what makes it cover every acknowledged write). Issue 5.

import { describe, expect, it } from 'vitest';
import type { BlockDevice, Extent } from '../../../src/engine/block-device.ts';
import {
  ImageIoError,
  InvalidOptionError,
  PermissionError,
  UnsupportedError,
} from '../../../src/engine/errors.ts';
import { formatRegistry, takesConcurrentWrites } from '../../../src/engine/formats/registry.ts';
import { chainStatus, NbdBackend, splitZeroRuns, toNbdError } from '../../../src/nbd/backend.ts';
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM } from '../../../src/nbd/wire.ts';
import { createMemoryDevice } from './memory-device.ts';

const KIB = 1024;

describe('NBD backend', () => {
  it('turns zero runs of 32 KiB or more into holes and keeps the rest as slices', () => {
    const data = Buffer.alloc(256 * KIB);
    data.fill(1, 0, 8 * KIB);
    data.fill(2, 40 * KIB, 44 * KIB); // 32 KiB of zeros before: a hole
    data.fill(3, 48 * KIB, 50 * KIB); // 4 KiB of zeros before: stays data
    const segments = splitZeroRuns(1024 * KIB, data, false);
    expect(
      segments.map((segment) => [
        segment.kind,
        segment.offsetBytes - 1024 * KIB,
        segment.kind === 'hole' ? segment.lengthBytes : segment.data.length,
      ]),
    ).toEqual([
      ['data', 0, 8 * KIB],
      ['hole', 8 * KIB, 32 * KIB],
      ['data', 40 * KIB, 12 * KIB],
      ['hole', 52 * KIB, 204 * KIB],
    ]);
    expect(splitZeroRuns(0, data, true)).toEqual([{ kind: 'data', offsetBytes: 0, data }]);
    expect(splitZeroRuns(0, Buffer.alloc(64 * KIB), true)).toEqual([
      { kind: 'hole', offsetBytes: 0, lengthBytes: 64 * KIB },
    ]);
    const striped = Buffer.alloc(8 * 1024 * KIB);
    for (let at = 0; at < striped.length; at += 64 * KIB) striped[at] = 1;
    expect(splitZeroRuns(0, striped, false)).toHaveLength(1);
  });

  it('reports a device that answers block status with nothing as data instead of looping', async () => {
    const { device } = createMemoryDevice(1024 * KIB);
    const silent = Object.create(device, {
      blockStatus: { value: async (): Promise<Extent[]> => [] },
    }) as BlockDevice;
    expect(await chainStatus(silent, 0, 1024 * KIB, 10)).toEqual([
      { offsetBytes: 0, lengthBytes: 1024 * KIB, data: true, zero: false, depth: 1 },
    ]);
  });

  it('maps engine error codes to NBD error values', () => {
    expect(toNbdError(new PermissionError({ message: 'no' })).nbdError).toBe(NBD_EPERM);
    expect(toNbdError(new InvalidOptionError({ option: 'x', message: 'no' })).nbdError).toBe(NBD_EINVAL);
    expect(toNbdError(new UnsupportedError({ format: 'raw', feature: 'x' })).nbdError).toBe(NBD_ENOTSUP);
    expect(toNbdError(new ImageIoError({ file: 'f', errno: 'ENOSPC', message: 'full' })).nbdError).toBe(
      NBD_ENOSPC,
    );
    expect(toNbdError(new ImageIoError({ file: 'f', errno: 'EIO', message: 'bad' })).nbdError).toBe(NBD_EIO);
    expect(toNbdError(new Error('anything')).nbdError).toBe(NBD_EIO);
  });

  it('runs a flush only after the writes already running have finished', async () => {
    const { device } = createMemoryDevice(1024 * KIB);
    const events: string[] = [];
    // 'raw' lets the two writes run at once; the flush must still wait for both.
    const slow = Object.create(device, {
      formatName: { value: 'raw' },
      write: {
        value: async (offsetBytes: number, data: Uint8Array) => {
          await new Promise((resolve) => setTimeout(resolve, 30));
          await device.write(offsetBytes, data);
          events.push(`write ${offsetBytes}`);
        },
      },
      flush: {
        value: async () => {
          events.push('flush');
        },
      },
    }) as BlockDevice;
    const backend = new NbdBackend({ name: '', device: slow });
    const writes = [
      backend.write(0, Buffer.alloc(512, 1), false),
      backend.write(4096, Buffer.alloc(512, 2), false),
    ];
    const flush = backend.flush();
    await Promise.all([...writes, flush]);
    expect(events).toEqual(['write 0', 'write 4096', 'flush']);
  });

  for (const [formatName, expectedOverlap] of [
    ['raw', 2],
    ['qcow2', 2],
    ['vdi', 1],
    ['memory', 1],
  ] as const) {
    it(`runs writes to a ${formatName} device ${expectedOverlap > 1 ? 'together' : 'one at a time'}, as its driver declares`, async () => {
      const { device } = createMemoryDevice(1024 * KIB);
      let running = 0;
      let mostRunning = 0;
      const counted = Object.create(device, {
        formatName: { value: formatName },
        write: {
          value: async (offsetBytes: number, data: Uint8Array) => {
            mostRunning = Math.max(mostRunning, ++running);
            await new Promise((resolve) => setTimeout(resolve, 20));
            await device.write(offsetBytes, data);
            running--;
          },
        },
      }) as BlockDevice;
      expect(takesConcurrentWrites(counted)).toBe(expectedOverlap > 1);
      const backend = new NbdBackend({ name: '', device: counted });
      await Promise.all([
        backend.write(0, Buffer.alloc(512, 1), false),
        backend.write(4096, Buffer.alloc(512, 2), false),
        backend.write(8192, Buffer.alloc(512, 3), false),
      ]);
      expect(mostRunning).toBe(expectedOverlap === 1 ? 1 : 3);
    });
  }

  it('has every registered driver declare whether it takes concurrent writes', () => {
    for (const driver of formatRegistry) {
      expect(typeof driver.capabilities.concurrentWrites, driver.name).toBe('boolean');
      // A driver that cannot write has nothing to run concurrently.
      if (!driver.capabilities.write) expect(driver.capabilities.concurrentWrites, driver.name).toBe(false);
    }
  });

  it('answers reads from the page cache at once only while no write holds or awaits the device', async () => {
    const { device } = createMemoryDevice(1024 * KIB, { cachedReads: 'all' });
    let finishWrite: () => void = () => undefined;
    const slow = Object.create(device, {
      formatName: { value: 'vdi' },
      write: {
        value: async (offsetBytes: number, data: Uint8Array) => {
          await new Promise<void>((resolve) => {
            finishWrite = resolve;
          });
          await device.write(offsetBytes, data);
        },
      },
    }) as BlockDevice;
    const backend = new NbdBackend({ name: '', device: slow });
    const buffer = Buffer.alloc(64 * KIB, 0xff);
    expect(backend.readNow(0, buffer)).toBe(buffer.length);
    expect(buffer.every((byte) => byte === 0)).toBe(true);
    const write = backend.write(0, Buffer.alloc(512, 9), false);
    await new Promise((resolve) => setTimeout(resolve, 10));
    // vdi writes are exclusive: a read now could see half a write, so it waits its turn in read().
    expect(backend.readNow(0, buffer)).toBe(0);
    finishWrite();
    await write;
    expect(backend.readNow(0, buffer)).toBe(buffer.length);
    expect(buffer[0]).toBe(9);
    // Past the end: nothing at once (read() answers the error).
    expect(backend.readNow(1000 * KIB, buffer)).toBe(0);
  });
});
