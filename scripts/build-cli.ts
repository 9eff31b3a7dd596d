// `npm run build`: bundles the CLI (src/cli/main.ts and every module a command can load) into
// dist/cli/: main.mjs, one chunk per command (loaded when it runs, as from source) and the shared
// engine, plus inputs.json, every bundled source file with the size and mtime it had before the build
// began. bin/vdisk.mjs runs the bundle only while every input is unchanged and the sources otherwise,
// so a bundle can go stale but never runs stale. Why: resolving, reading and compiling ~90 modules
// one by one is most of a short command's time (qemu-img check takes 5 ms). Packages (koffi, pino,
// ...) stay outside the bundle and load from node_modules as before.

import { mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import { type Plugin, rolldown } from 'rolldown';

/** The bundle's folder and files, relative to the repository (bin/vdisk.mjs spells them too). */
export const BUNDLE_DIR = 'dist/cli';
export const BUNDLE_ENTRY = 'main.mjs';
export const BUNDLE_INPUTS = 'inputs.json';

/** Names a JavaScript identifier can carry (what an `export const` can declare). */
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/**
 * Node makes the ESM namespace of a built-in by reading every export, which runs the lazy getters:
 * `import { constants } from 'node:fs'` loads all of Node's stream modules (~1.5 ms) for fs.ReadStream,
 * which no command uses. In the bundle a built-in comes from process.getBuiltinModule instead, as the
 * module object's plain data properties; importing an accessor (e.g. fs.promises) fails the build.
 */
const builtinsByGetBuiltinModule: Plugin = {
  name: 'vdisk-builtins',
  resolveId(id) {
    return id.startsWith('node:') ? { id: `\0builtin:${id}`, moduleSideEffects: false } : undefined;
  },
  load(id) {
    if (!id.startsWith('\0builtin:')) return undefined;
    const name = id.slice('\0builtin:'.length);
    const module = process.getBuiltinModule(name) as object | undefined;
    if (!module) throw new Error(`build-cli: ${name} is not a Node.js built-in`);
    const names = Object.entries(Object.getOwnPropertyDescriptors(module))
      .filter(([key, descriptor]) => 'value' in descriptor && IDENTIFIER.test(key) && key !== 'default')
      .map(([key]) => key);
    return [
      `const module = process.getBuiltinModule(${JSON.stringify(name)});`,
      'export default module;',
      // Marked pure so the bundler drops the ones nothing imports.
      ...names.map((key) => `export const ${key} = /* @__PURE__ */ (() => module.${key})();`),
    ].join('\n');
  },
};

/** [path relative to the repository, size in bytes, mtime in ms]: what bin/vdisk.mjs compares. */
export type BundleInput = [path: string, sizeBytes: number, mtimeMs: number];

/** Builds `<root>/dist/cli` from `<root>/src`; returns the inputs it recorded. */
export async function buildCli(root = join(import.meta.dirname, '..')): Promise<BundleInput[]> {
  const statInput = (path: string): BundleInput => {
    const stat = statSync(join(root, path));
    return [path, stat.size, stat.mtimeMs];
  };
  // Stat before bundling: a file edited while rolldown reads it then shows a newer mtime than the one
  // recorded, so the bundle counts as stale (stat after could record new with old content).
  const before = new Map<string, BundleInput>();
  for (const entry of readdirSync(join(root, 'src'), { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = relative(root, join(entry.parentPath, entry.name));
    before.set(path, statInput(path));
  }
  const build = await rolldown({
    input: { main: join(root, 'src/cli/main.ts') },
    platform: 'node',
    // Bare specifiers are packages; node: built-ins become process.getBuiltinModule calls.
    external: (id) =>
      !id.startsWith('.') && !id.startsWith('node:') && !isAbsolute(id) && !id.startsWith('\0'),
    plugins: [builtinsByGetBuiltinModule],
  });
  const staging = join(root, `${BUNDLE_DIR}.tmp`);
  rmSync(staging, { recursive: true, force: true });
  let inputs: BundleInput[];
  try {
    const { output } = await build.write({
      dir: staging,
      format: 'esm',
      entryFileNames: '[name].mjs',
      chunkFileNames: '[name]-[hash].mjs',
    });
    const ids = new Set(output.flatMap((item) => (item.type === 'chunk' ? item.moduleIds : [])));
    inputs = [...ids]
      .filter((id) => isAbsolute(id))
      .map((id) => relative(root, id))
      .sort()
      .map((path) => before.get(path) ?? statInput(path));
    if (!output.some((item) => item.type === 'chunk' && item.fileName === BUNDLE_ENTRY))
      throw new Error(`build-cli: rolldown wrote no ${BUNDLE_ENTRY}`);
    writeFileSync(join(staging, BUNDLE_INPUTS), `${JSON.stringify({ inputs })}\n`);
  } finally {
    await build.close();
  }
  // Swap the folder in whole: a launcher sees the old bundle, none (and runs the sources), or the new.
  mkdirSync(join(root, 'dist'), { recursive: true });
  rmSync(join(root, BUNDLE_DIR), { recursive: true, force: true });
  renameSync(staging, join(root, BUNDLE_DIR));
  return inputs;
}

if (process.argv[1] === import.meta.filename) {
  const inputs = await buildCli();
  process.stdout.write(`build-cli: ${BUNDLE_DIR}/${BUNDLE_ENTRY} from ${inputs.length} source files\n`);
}
