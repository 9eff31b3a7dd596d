// qemu-img -p progress (util/qemu-progress.c, progress_simple_print): `    (12.34/100%)` followed by a
// carriage return, redrawn each time progress moves by at least 1%, then a newline at the end. Off a
// terminal each redraw is a line of its own, so logs stay readable.

import { formatFixed } from './c-format.ts';
import type { CliIo } from './command.ts';

export interface ProgressPrinter {
  /** Reports `doneBytes` of `totalBytes`. */
  update(doneBytes: number, totalBytes: number): void;
  /** Prints 100% and the final newline. */
  end(): void;
}

/** A printer writing to stdout, as qemu-img does; `enabled` false gives one that prints nothing. */
export function progressPrinter(io: CliIo, enabled: boolean): ProgressPrinter {
  if (!enabled) return { update: () => undefined, end: () => undefined };
  const terminator = io.isTty ? '\r' : '\n';
  let lastPrinted = -1;
  const print = (percent: number): void => {
    lastPrinted = percent;
    io.stdout(`    (${formatFixed(percent, 2)}/100%)${terminator}`);
  };
  print(0);
  return {
    update(doneBytes, totalBytes) {
      const percent = totalBytes > 0 ? Math.min(100, (doneBytes * 100) / totalBytes) : 100;
      if (percent - lastPrinted >= 1 && percent < 100) print(percent);
    },
    end() {
      print(100);
      if (io.isTty) io.stdout('\n');
    },
  };
}
