// Bookkeeping for reading a qcow2 image from a forward-only stream: the host ranges named by metadata
// already seen but not yet passed (a min-heap on host offset), and the host ranges already passed with
// a known role (merged intervals, to catch a late second reference that can no longer be served).
// Both grow with the number of discontiguous runs, not with the image size; both are capped.

import { UnsupportedError } from '../../errors.ts';

/** More pending runs than this refuses the stream (a pathologically fragmented image; convert from a file). */
export const MAX_PENDING_RUNS = 1 << 20;

export interface PendingData {
  kind: 'data';
  /** First host byte of the run (cluster aligned). */
  hostOffsetBytes: number;
  guestOffsetBytes: number;
  /** Whole clusters (the guest end is clipped to the virtual size when written). */
  lengthBytes: number;
  /** Extended L2, one cluster: bit i set = subcluster i holds data (the others read as zeros). */
  subclusterAllocated?: number;
}

export interface PendingCompressed {
  kind: 'compressed';
  hostOffsetBytes: number;
  /** Bytes from hostOffsetBytes to the end of the last sector holding compressed data. */
  lengthBytes: number;
  guestOffsetBytes: number;
}

export type PendingItem = PendingData | PendingCompressed;

function tooFragmented(what: string): UnsupportedError {
  return new UnsupportedError({
    format: 'qcow2',
    feature: 'stream',
    message: `the streamed qcow2 image needs more than ${MAX_PENDING_RUNS} ${what} to be tracked at once (too fragmented for a stream; convert it from a file)`,
  });
}

/** A binary min-heap of pending items ordered by host offset. */
export class PendingHeap {
  private readonly items: PendingItem[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): PendingItem | undefined {
    return this.items[0];
  }

  push(item: PendingItem): void {
    if (this.items.length >= MAX_PENDING_RUNS) throw tooFragmented('pending runs');
    const items = this.items;
    items.push(item);
    let at = items.length - 1;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      const up = items[parent] as PendingItem;
      if (up.hostOffsetBytes <= item.hostOffsetBytes) break;
      items[at] = up;
      at = parent;
    }
    items[at] = item;
  }

  pop(): PendingItem | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    let at = 0;
    for (;;) {
      const left = 2 * at + 1;
      if (left >= items.length) break;
      const right = left + 1;
      const leftItem = items[left] as PendingItem;
      const rightItem = items[right];
      const child =
        rightItem !== undefined && rightItem.hostOffsetBytes < leftItem.hostOffsetBytes ? right : left;
      const childItem = items[child] as PendingItem;
      if (childItem.hostOffsetBytes >= last.hostOffsetBytes) break;
      items[at] = childItem;
      at = child;
    }
    items[at] = last;
    return top;
  }
}

/**
 * Host ranges passed with a known role, kept sorted and merged. Ranges arrive in stream order (appends)
 * except the rare late ones served from the spill file, which are inserted.
 */
export class PassedRanges {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  /** Index of the first range whose end is past `offsetBytes`. */
  private firstEndingAfter(offsetBytes: number): number {
    let low = 0;
    let high = this.starts.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if ((this.ends[middle] as number) <= offsetBytes) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  add(startBytes: number, endBytes: number): void {
    // Ranges touching [start, end) (end == start counts) merge into one.
    const first = this.firstEndingAfter(startBytes - 1);
    let last = first;
    let start = startBytes;
    let end = endBytes;
    while (last < this.starts.length && (this.starts[last] as number) <= endBytes) {
      start = Math.min(start, this.starts[last] as number);
      end = Math.max(end, this.ends[last] as number);
      last++;
    }
    if (last === first && this.starts.length >= MAX_PENDING_RUNS) throw tooFragmented('passed ranges');
    this.starts.splice(first, last - first, start);
    this.ends.splice(first, last - first, end);
  }

  /** Whether [startBytes, endBytes) overlaps a recorded range. */
  overlaps(startBytes: number, endBytes: number): boolean {
    const index = this.firstEndingAfter(startBytes);
    return index < this.starts.length && (this.starts[index] as number) < endBytes;
  }
}
