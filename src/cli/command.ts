// What one CLI subcommand is: its name, a one-line synopsis in qemu-img's style, and a handler that
// takes argv (after the subcommand) and returns the process exit code. Output goes through `io` so
// tests capture it without spawning a process.

import type { Writable } from 'node:stream';

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** True when stderr is a terminal (progress bars redraw in place only then). */
  isTty: boolean;
  /** Binary stdin for `convert ... -` (image data); process.stdin when absent. */
  stdinStream?: AsyncIterable<Uint8Array>;
  /** Binary stdout for `convert ... -` (image data); process.stdout when absent. */
  stdoutStream?: Writable;
}

export interface CliCommand {
  name: string;
  synopsis: string;
  summary: string;
  run(argv: string[], io: CliIo): Promise<number>;
}
