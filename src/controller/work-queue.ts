// A rate-limited work queue keyed by `namespace/name`, as client-go's workqueue is: a key is queued
// at most once, is never processed by two workers at once (re-added while running -> runs again
// after), and failures are retried with per-key exponential backoff (base * 2^failures, capped).

export interface WorkQueueOptions {
  /** First retry delay after a failure. */
  baseDelayMs: number;
  /** Upper bound of the backoff delay. */
  maxDelayMs: number;
  /** Timer functions (tests inject fake ones). */
  setTimer?: (callback: () => void, delayMs: number) => unknown;
  clearTimer?: (handle: unknown) => void;
}

export const DEFAULT_QUEUE_OPTIONS: WorkQueueOptions = { baseDelayMs: 200, maxDelayMs: 60_000 };

/** The queue; `get` waits for the next key, `done` releases it, `forget` resets its backoff. */
export class WorkQueue {
  private readonly options: WorkQueueOptions;
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly dirtyWhileProcessing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, unknown>();
  private readonly waiters: Array<(key: string | undefined) => void> = [];
  private isShutDown = false;

  constructor(options: Partial<WorkQueueOptions> = {}) {
    this.options = { ...DEFAULT_QUEUE_OPTIONS, ...options };
  }

  /** Number of keys waiting (not counting delayed or running ones). */
  get length(): number {
    return this.queue.length;
  }

  /** Queues `key` now (deduplicated). */
  add(key: string): void {
    if (this.isShutDown) return;
    if (this.processing.has(key)) {
      this.dirtyWhileProcessing.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      this.processing.add(key);
      waiter(key);
      return;
    }
    this.queued.add(key);
    this.queue.push(key);
  }

  /** Queues `key` after `delayMs`; an earlier pending delayed add for the key is kept if sooner. */
  addAfter(key: string, delayMs: number): void {
    if (this.isShutDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    if (this.timers.has(key)) return;
    const setTimer = this.options.setTimer ?? ((callback, ms) => setTimeout(callback, ms).unref());
    this.timers.set(
      key,
      setTimer(() => {
        this.timers.delete(key);
        this.add(key);
      }, delayMs),
    );
  }

  /** The delay the next failure of `key` will wait: base * 2^failures, capped at maxDelayMs. */
  nextBackoffMs(key: string): number {
    const failures = this.failures.get(key) ?? 0;
    return Math.min(this.options.baseDelayMs * 2 ** Math.min(failures, 30), this.options.maxDelayMs);
  }

  /** Records a failure of `key` and queues it after its backoff delay; returns that delay. */
  addRateLimited(key: string): number {
    const delayMs = this.nextBackoffMs(key);
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
    this.addAfter(key, delayMs);
    return delayMs;
  }

  /** How many times `key` failed since its last success. */
  failureCount(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** Resets `key`'s backoff (call after a successful reconcile). */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** The next key, or undefined once the queue is shut down. The key is "processing" until done(). */
  get(): Promise<string | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.queued.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.isShutDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Marks `key` finished; if it was added meanwhile it is queued again. */
  done(key: string): void {
    this.processing.delete(key);
    if (this.dirtyWhileProcessing.delete(key)) this.add(key);
  }

  /** Stops handing out keys: pending get() calls resolve undefined; timers are cleared. */
  shutDown(): void {
    this.isShutDown = true;
    const clearTimer = this.options.clearTimer ?? ((handle) => clearTimeout(handle as NodeJS.Timeout));
    for (const handle of this.timers.values()) clearTimer(handle);
    this.timers.clear();
    for (const waiter of this.waiters.splice(0)) waiter(undefined);
  }
}
