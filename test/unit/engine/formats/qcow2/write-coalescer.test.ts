// WriteCoalescer: writes of one microtask turn that touch adjacent ranges become one write (no copy
// when their bytes already lie back to back in one buffer), others stay apart, a run never passes
// the cap, every caller learns when its bytes are written, and a failed write fails its whole run.
import { describe, expect, it } from 'vitest';
import { WriteCoalescer } from '../../../../../src/engine/formats/qcow2/write-coalescer.ts';

function recorder(): {
  calls: Array<{ offsetBytes: number; data: Uint8Array }>;
  coalescer: (maxBytes: number, fail?: boolean) => WriteCoalescer;
} {
  const calls: Array<{ offsetBytes: number; data: Uint8Array }> = [];
  return {
    calls,
    coalescer: (maxBytes, fail = false) =>
      new WriteCoalescer(async (offsetBytes, data) => {
        calls.push({ offsetBytes, data: Uint8Array.from(data) });
        if (fail) throw new Error('disk full');
      }, maxBytes),
  };
}

describe('WriteCoalescer', () => {
  it('joins adjacent writes of one turn, in offset order, and keeps the others apart', async () => {
    const { calls, coalescer } = recorder();
    const writer = coalescer(1 << 20);
    const chunk = Uint8Array.from({ length: 64 }, (_, index) => index);
    await Promise.all([
      writer.write(16, chunk.subarray(16, 32)),
      writer.write(0, chunk.subarray(0, 16)),
      writer.write(32, chunk.subarray(32, 48)),
      writer.write(100, Uint8Array.of(7, 7)),
    ]);
    expect(calls.map((call) => [call.offsetBytes, call.data.length])).toEqual([
      [0, 48],
      [100, 2],
    ]);
    expect(Array.from(calls[0]?.data ?? [])).toEqual(Array.from(chunk.subarray(0, 48)));
  });

  it('copies bytes from separate buffers into one run and splits runs at the cap', async () => {
    const { calls, coalescer } = recorder();
    const writer = coalescer(8);
    await Promise.all(
      [0, 4, 8, 12].map((offsetBytes) => writer.write(offsetBytes, new Uint8Array(4).fill(offsetBytes))),
    );
    expect(calls.map((call) => [call.offsetBytes, Array.from(call.data)])).toEqual([
      [0, [0, 0, 0, 0, 4, 4, 4, 4]],
      [8, [8, 8, 8, 8, 12, 12, 12, 12]],
    ]);
  });

  it('fails every write of a run whose write failed', async () => {
    const { coalescer } = recorder();
    const writer = coalescer(1 << 20, true);
    const results = await Promise.allSettled([
      writer.write(0, new Uint8Array(4)),
      writer.write(4, new Uint8Array(4)),
    ]);
    expect(results.map((result) => result.status)).toEqual(['rejected', 'rejected']);
  });

  it('writes a later turn separately', async () => {
    const { calls, coalescer } = recorder();
    const writer = coalescer(1 << 20);
    await writer.write(0, new Uint8Array(4));
    await writer.write(4, new Uint8Array(4));
    expect(calls).toHaveLength(2);
  });
});
