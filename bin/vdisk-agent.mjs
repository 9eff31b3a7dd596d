#!/usr/bin/env node
// Entry point of the vdisk container image: `vdisk-agent <controller|imager|attach> ...` (src/agent/main.ts).
import { runAgent } from '../src/agent/main.ts';

runAgent(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`vdisk-agent: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
