// WriteOverlay's memory of sent deletes: a Job deleted by this controller counts as deleting until the
// watch catches up, and the memory does not outlive DELETE_MEMORY_MS (5 minutes) or grow without bound.
import { describe, expect, it } from 'vitest';
import { WriteOverlay } from '../../../src/controller/context.ts';

const MINUTE = 60_000;

describe('WriteOverlay deletes', () => {
  it('remembers a sent delete by uid for five minutes', () => {
    const overlay = new WriteOverlay();
    overlay.rememberDeleted('uid-a', 0);
    expect(overlay.wasDeleted('uid-a', 0)).toBe(true);
    expect(overlay.wasDeleted('uid-a', 5 * MINUTE)).toBe(true);
    expect(overlay.wasDeleted('uid-a', 5 * MINUTE + 1)).toBe(false);
    expect(overlay.wasDeleted('uid-b', 0)).toBe(false);
    expect(overlay.wasDeleted(undefined, 0)).toBe(false);
  });

  it('ignores a delete without a uid (the object was not in the cache)', () => {
    const overlay = new WriteOverlay();
    overlay.rememberDeleted(undefined, 0);
    expect(overlay.wasDeleted(undefined, 0)).toBe(false);
  });

  it('prunes old entries as new deletes arrive', () => {
    const overlay = new WriteOverlay();
    for (let index = 0; index < 1000; index++) overlay.rememberDeleted(`old-${index}`, 0);
    overlay.rememberDeleted('new', 10 * MINUTE);
    const size = (overlay as unknown as { deleted: Map<string, number> }).deleted.size;
    expect(size).toBe(1);
    expect(overlay.wasDeleted('new', 10 * MINUTE)).toBe(true);
  });
});
