// Work that arrives in the same microtask turn, handled together: `convert -c` clusters come back
// from the compression pool a batch at a time, and storing each alone took the device lock, an L2
// lookup, an allocation and a pwrite round trip per cluster (8 Ki of them, one after another, for
// a 1 GiB guest). TurnBatch gathers a turn's items; WriteCoalescer joins a turn's adjacent writes.

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * Collects what callers add during one microtask turn and hands it to `handle` as one list; each
 * caller's promise settles with the handling of its list. Work that arrives together (a batch of
 * clusters back from the compression pool) is then done under one lock, in as few writes as it allows.
 */
export class TurnBatch<T> {
  private readonly handle: (items: T[]) => Promise<void>;
  private items: T[] = [];
  private waiters: Waiter[] = [];

  constructor(handle: (items: T[]) => Promise<void>) {
    this.handle = handle;
  }

  add(item: T): Promise<void> {
    return new Promise((resolve, reject) => {
      this.items.push(item);
      this.waiters.push({ resolve, reject });
      // After the other continuations already queued: a batch resolved together lands together.
      if (this.items.length === 1) queueMicrotask(() => this.flush());
    });
  }

  private flush(): void {
    const items = this.items;
    const waiters = this.waiters;
    this.items = [];
    this.waiters = [];
    this.handle(items).then(
      () => {
        for (const waiter of waiters) waiter.resolve();
      },
      (err: unknown) => {
        for (const waiter of waiters) waiter.reject(err);
      },
    );
  }
}

interface Pending {
  offsetBytes: number;
  data: Uint8Array;
}

/** Joins writes of one turn that touch adjacent ranges (in offset order) into one `writeRange` call each. */
export class WriteCoalescer {
  private readonly writeRange: (offsetBytes: number, data: Uint8Array) => Promise<void>;
  private readonly maxBytes: number;
  private readonly batch = new TurnBatch<Pending>((writes) => this.writeAll(writes));

  /** `writeRange` writes one joined range; ranges are at most `maxBytes` long (unless one write is). */
  constructor(writeRange: (offsetBytes: number, data: Uint8Array) => Promise<void>, maxBytes: number) {
    this.writeRange = writeRange;
    this.maxBytes = maxBytes;
  }

  /** Writes `data` at `offsetBytes`, together with adjacent writes of the same turn; resolves when written. */
  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.batch.add({ offsetBytes, data });
  }

  private async writeAll(writes: Pending[]): Promise<void> {
    writes.sort((a, b) => a.offsetBytes - b.offsetBytes);
    const runs: Promise<void>[] = [];
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
      runs.push(this.writeRange((group[0] as Pending).offsetBytes, joined(group, lengthBytes)));
      first = end;
    }
    // Every run is tried; the turn fails when any did.
    const results = await Promise.allSettled(runs);
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
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
