#!/usr/bin/env node
// Entry point of the vdisk container image: `vdisk-agent <controller|imager|attach> ...` (src/agent/main.ts).
// The compile cache (as in bin/vdisk.mjs) keeps stripped TypeScript between runs: imager pods start faster.
import * as nodeModule from 'node:module';

nodeModule.enableCompileCache?.();
const { runAgent } = await import('../src/agent/main.ts');
runAgent(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`vdisk-agent: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
