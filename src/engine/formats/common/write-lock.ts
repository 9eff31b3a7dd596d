// A FIFO lock for allocating writes: the NBD server issues requests concurrently, and two writes that
// both find a block unallocated would each append one and the later table update would drop the
// other's data. Drivers run each write through `run`, so allocation (reserve, fill, commit) is atomic.

/** Runs async tasks one at a time, in call order; a failed task does not block the next. */
export class WriteLock {
  private tail: Promise<unknown> = Promise.resolve();

  /** Queues `task` after every task queued before it; resolves or rejects with its result. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task, task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}
