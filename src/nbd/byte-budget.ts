// One memory budget shared by every connection of a server: request bytes in flight (read lengths,
// write payloads) are taken from it, so many clients together stay bounded, not just each one.
// A connection with nothing in flight may always start one request, so none can starve.

export class ByteBudget {
  readonly limitBytes: number;
  private usedBytes = 0;
  private readonly waiters = new Set<() => void>();

  /** `limitBytes`: the most bytes all connections together may have in flight. */
  constructor(limitBytes: number) {
    this.limitBytes = limitBytes;
  }

  get hasRoom(): boolean {
    return this.usedBytes < this.limitBytes;
  }

  take(bytes: number): void {
    this.usedBytes += bytes;
  }

  /** Returns bytes and wakes connections that were waiting for room. */
  give(bytes: number): void {
    this.usedBytes -= bytes;
    if (this.hasRoom && this.waiters.size > 0) {
      for (const waiter of [...this.waiters]) waiter();
    }
  }

  /** Calls `waiter` whenever room frees up, until `forget`. */
  watch(waiter: () => void): void {
    this.waiters.add(waiter);
  }

  forget(waiter: () => void): void {
    this.waiters.delete(waiter);
  }
}
