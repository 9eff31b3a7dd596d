#!/usr/bin/env node
// Entry point for `vdisk`: the CLI is TypeScript run directly by Node.js 24's type stripping.
// The compile cache keeps the stripped, compiled modules between runs (in os.tmpdir(), or
// NODE_COMPILE_CACHE), cutting start-up from ~1.5 s and ~100 MiB to ~0.3 s and ~70 MiB; Node
// skips it silently where the folder is not writable, and NODE_DISABLE_COMPILE_CACHE=1 turns it off.
// Where `npm run build` (scripts/build-cli.ts) has bundled the CLI into dist/cli and no source file
// it was built from has changed since (same size and mtime), the bundle runs instead: loading a few
// chunks rather than ~90 modules cuts a third off a short command (vdisk info: ~56 -> ~36 ms).
// VDISK_FROM_SOURCE=1 forces the sources; so does any doubt (no bundle, a changed or missing input,
// an unreadable list).
// Built-ins come from process.getBuiltinModule: an ESM import of node:fs would read every export of
// it, loading all of Node's stream modules (~1.5 ms) that no command uses.
const { readFileSync, statSync } = process.getBuiltinModule('node:fs');
process.getBuiltinModule('node:module').enableCompileCache?.();

const ROOT = `${import.meta.dirname}/..`;

/** True when dist/cli was built from exactly the source files now on disk. */
function bundleIsCurrent() {
  if (process.env.VDISK_FROM_SOURCE === '1') return false;
  try {
    const { inputs } = JSON.parse(readFileSync(`${ROOT}/dist/cli/inputs.json`, 'utf8'));
    return (
      inputs.length > 0 &&
      inputs.every(([path, sizeBytes, mtimeMs]) => {
        const stat = statSync(`${ROOT}/${path}`, { throwIfNoEntry: false });
        return stat !== undefined && stat.size === sizeBytes && stat.mtimeMs === mtimeMs;
      })
    );
  } catch {
    return false;
  }
}

let bundled = false;
if (bundleIsCurrent()) {
  try {
    await import('../dist/cli/main.mjs');
    bundled = true;
  } catch (err) {
    // Only a bundle swapped away mid-start (a rebuild) falls back; its code has not run yet then.
    if (err?.code !== 'ERR_MODULE_NOT_FOUND') throw err;
  }
}
if (!bundled) await import('../src/cli/main.ts');
