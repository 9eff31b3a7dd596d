#!/usr/bin/env node
// Entry point for `vdisk`: the CLI is TypeScript run directly by Node.js 24's type stripping.
// The compile cache keeps the stripped, compiled modules between runs (in os.tmpdir(), or
// NODE_COMPILE_CACHE), cutting start-up from ~1.5 s and ~100 MiB to ~0.3 s and ~70 MiB; Node
// skips it silently where the folder is not writable, and NODE_DISABLE_COMPILE_CACHE=1 turns it off.
import * as nodeModule from 'node:module';

nodeModule.enableCompileCache?.();
await import('../src/cli/main.ts');
