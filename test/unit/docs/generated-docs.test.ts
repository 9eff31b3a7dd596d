// docs/formats.md and docs/cli.md are generated from the registry and the command table;
// this fails when someone changes either without regenerating (node scripts/generate-docs.ts).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { generatedDocs } from '../../../scripts/generate-docs.ts';

const root = fileURLToPath(new URL('../../../', import.meta.url));

describe('generated docs', () => {
  for (const doc of generatedDocs) {
    it(`${doc.path} matches its source (regenerate with node scripts/generate-docs.ts)`, async () => {
      expect(readFileSync(`${root}${doc.path}`, 'utf8')).toBe(await doc.render());
    });
  }
});
