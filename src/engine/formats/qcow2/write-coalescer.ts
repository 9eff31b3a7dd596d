// Joins writes that arrive in the same microtask turn and touch adjacent ranges into one write. Used
// for the clusters `convert -c` could not shrink: they come back from the compression pool a batch
// at a time, and writing each alone took the device lock, an L2 lookup, an allocation and a pwrite
// round trip per 64 KiB cluster (8 Ki of them, one after another, for a 1 GiB guest of random data).

interface Pending {
  offsetBytes: number;
  data: Uint8Array;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class WriteCoalescer {
  private readonly writeRange: (offsetBytes: number, data: Uint8Array) => Promise<void>;
  private readonly maxBytes: number;
  private pending: Pending[] = [];
  private flushQueued = false;

  /** `writeRange` writes one joined range; ranges are at most `maxBytes` long (unless one write is). */
  constructor(writeRange: (offsetBytes: number, data: Uint8Array) => Promise<void>, maxBytes: number) {
    this.writeRange = writeRange;
    this.maxBytes = maxBytes;
  }

  /** Writes `data` at `offsetBytes`, together with adjacent writes of the same turn; resolves when written. */
  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ offsetBytes, data, resolve, reject });
      if (this.flushQueued) return;
      this.flushQueued = true;
      // After the other continuations already queued: a batch resolved together lands together.
      queueMicrotask(() => this.flush());
    });
  }

  private flush(): void {
    this.flushQueued = false;
    const writes = this.pending.sort((a, b) => a.offsetBytes - b.offsetBytes);
    this.pending = [];
    let first = 0;
    while (first < writes.length) {
      let end = first + 1;
      let lengthBytes = writes[first]?.data.length ?? 0;
      for (; end < writes.length; end++) {
        const previous = writes[end - 1] as Pending;
        const next = writes[end] as Pending;
        if (next.offsetBytes !== previous.offsetBytes + previous.data.length) break;
        if (lengthBytes + next.data.length > this.maxBytes) break;
        lengthBytes += next.data.length;
      }
      const group = writes.slice(first, end);
      this.writeRange((group[0] as Pending).offsetBytes, joined(group, lengthBytes)).then(
        () => {
          for (const write of group) write.resolve();
        },
        (err: unknown) => {
          for (const write of group) write.reject(err);
        },
      );
      first = end;
    }
  }
}

/** The group's bytes as one view: without a copy when they already lie back to back in one buffer. */
function joined(group: Pending[], lengthBytes: number): Uint8Array {
  const head = (group[0] as Pending).data;
  if (group.length === 1) return head;
  let adjacent = true;
  for (let index = 1; index < group.length && adjacent; index++) {
    const previous = (group[index - 1] as Pending).data;
    const next = (group[index] as Pending).data;
    adjacent = next.buffer === head.buffer && next.byteOffset === previous.byteOffset + previous.length;
  }
  if (adjacent) return new Uint8Array(head.buffer, head.byteOffset, lengthBytes);
  const copy = new Uint8Array(lengthBytes);
  let at = 0;
  for (const write of group) {
    copy.set(write.data, at);
    at += write.data.length;
  }
  return copy;
}
