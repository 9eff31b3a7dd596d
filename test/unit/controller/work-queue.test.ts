// The work queue deduplicates keys, never hands one key to two workers, and backs off per key.
import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../../src/controller/work-queue.ts';

function fakeTimers() {
  const pending: Array<{ at: number; callback: () => void; id: number }> = [];
  let now = 0;
  let nextId = 0;
  return {
    setTimer: (callback: () => void, delayMs: number) => {
      const id = nextId++;
      pending.push({ at: now + delayMs, callback, id });
      return id;
    },
    clearTimer: (handle: unknown) => {
      const index = pending.findIndex((timer) => timer.id === handle);
      if (index >= 0) pending.splice(index, 1);
    },
    advance(ms: number) {
      now += ms;
      for (const timer of pending.filter((candidate) => candidate.at <= now)) {
        pending.splice(pending.indexOf(timer), 1);
        timer.callback();
      }
    },
    get delays() {
      return pending.map((timer) => timer.at - now);
    },
  };
}

describe('WorkQueue', () => {
  it('queues a key once however often it is added', async () => {
    const queue = new WorkQueue();
    queue.add('ns/a');
    queue.add('ns/a');
    queue.add('ns/b');
    expect(queue.length).toBe(2);
    expect(await queue.get()).toBe('ns/a');
    expect(await queue.get()).toBe('ns/b');
  });

  it('runs a key added while it is processing again after done, not concurrently', async () => {
    const queue = new WorkQueue();
    queue.add('ns/a');
    const key = await queue.get();
    queue.add('ns/a');
    expect(queue.length).toBe(0);
    queue.done(key!);
    expect(queue.length).toBe(1);
  });

  it('hands a key to a waiting worker as soon as it is added', async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.add('ns/late');
    expect(await waiting).toBe('ns/late');
  });

  it('doubles the retry delay per failure up to the cap, and forget resets it', () => {
    const timers = fakeTimers();
    const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000, ...timers });
    const delays: number[] = [];
    for (let attempt = 0; attempt < 6; attempt++) {
      delays.push(queue.addRateLimited('ns/a'));
      timers.advance(10_000);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(queue.failureCount('ns/a')).toBe(6);
    queue.forget('ns/a');
    expect(queue.nextBackoffMs('ns/a')).toBe(100);
  });

  it('keeps backoff per key', () => {
    const timers = fakeTimers();
    const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000, ...timers });
    queue.addRateLimited('ns/a');
    timers.advance(1000);
    queue.addRateLimited('ns/a');
    expect(queue.nextBackoffMs('ns/b')).toBe(100);
    expect(queue.nextBackoffMs('ns/a')).toBe(400);
  });

  it('adds a delayed key only when its timer fires', () => {
    const timers = fakeTimers();
    const queue = new WorkQueue({ ...timers });
    queue.addAfter('ns/a', 500);
    timers.advance(499);
    expect(queue.length).toBe(0);
    timers.advance(1);
    expect(queue.length).toBe(1);
  });

  it('releases waiting workers with undefined on shutdown', async () => {
    const timers = fakeTimers();
    const queue = new WorkQueue({ ...timers });
    const waiting = queue.get();
    queue.addAfter('ns/a', 500);
    queue.shutDown();
    expect(await waiting).toBeUndefined();
    expect(timers.delays).toEqual([]);
  });
});
