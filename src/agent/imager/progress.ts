// Progress of a running imager, as JSON lines on stdout ({"progress":42.5}): the controller follows
// the pod's log (pods/log?follow=true, a stream like a watch) and copies the newest value into
// status.progress. Lines are rate-limited here so a fast copy cannot flood the log or the API server.

/** A line is written when the percentage moved by at least this much... */
const MIN_STEP_PERCENT = 1;
/** ...or this long after the previous line, if it moved at all. */
const MIN_INTERVAL_MS = 2_000;

/** The JSON line the imager prints for a progress value (percent with one decimal). */
export function progressLine(percent: number): string {
  return `${JSON.stringify({ progress: Math.floor(percent * 10) / 10 })}\n`;
}

/** Reads a progress line back; undefined for any other line. */
export function parseProgressLine(line: string): number | undefined {
  if (!line.startsWith('{"progress":')) return undefined;
  try {
    const value = (JSON.parse(line) as { progress?: unknown }).progress;
    return typeof value === 'number' && value >= 0 && value <= 100 ? value : undefined;
  } catch {
    return undefined;
  }
}

export type ProgressSink = (percent: number) => void;

/**
 * A sink that writes progress lines with `write`, at most one per whole-percent step or per two
 * seconds; 100 is always written. `now` is injectable for tests.
 */
export function progressPrinter(write: (line: string) => void, now: () => number = Date.now): ProgressSink {
  let lastPercent = -1;
  let lastAtMs = 0;
  return (percent) => {
    const clamped = Math.min(100, Math.max(0, percent));
    const atMs = now();
    const moved = clamped - lastPercent;
    if (
      clamped === 100
        ? lastPercent !== 100
        : moved >= MIN_STEP_PERCENT || (moved > 0 && atMs - lastAtMs >= MIN_INTERVAL_MS)
    ) {
      lastPercent = clamped;
      lastAtMs = atMs;
      write(progressLine(clamped));
    }
  };
}

/** Maps a stage's own 0..1 fraction onto [fromPercent, toPercent] of the whole operation. */
export function stage(
  sink: ProgressSink,
  fromPercent: number,
  toPercent: number,
): (fraction: number) => void {
  return (fraction) => sink(fromPercent + (toPercent - fromPercent) * Math.min(1, Math.max(0, fraction)));
}
