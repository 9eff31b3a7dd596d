// A FIFO async mutex: serializes qcow2 metadata updates (allocation, L2 and refcount changes) so one
// request's table edits never interleave with another's. Data reads run outside it once mapped.

export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  /** Holders running or waiting: a synchronous reader steps aside while any table edit may be half done. */
  private holders = 0;

  get isFree(): boolean {
    return this.holders === 0;
  }

  /** Runs `work` after every earlier holder has finished; the lock is released even when it throws. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    this.holders++;
    const previous = this.tail;
    let release: () => void = () => undefined;
    this.tail = new Promise<void>((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      return await work();
    } finally {
      this.holders--;
      release();
    }
  }
}
