// `npm run generate`: writes crds/*.yaml and config/crd/ from the zod schemas in src/api.
// test/unit/api/generated.test.ts fails when the checked-in files differ from what this writes.

import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderGeneratedFiles } from '../src/api/render.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
for (const [path, text] of Object.entries(renderGeneratedFiles())) {
  const target = join(root, path);
  await mkdir(dirname(target), { recursive: true });
  await writeFile(target, text);
  process.stdout.write(`wrote ${path}\n`);
}
