// The checked-in CRDs (crds/, config/crd/) are exactly what `npm run generate` writes from src/api.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderGeneratedFiles } from '../../../src/api/render.ts';

const root = join(import.meta.dirname, '..', '..', '..');

describe('generated CRDs', () => {
  for (const [path, expected] of Object.entries(renderGeneratedFiles())) {
    it(`${path} is up to date (run npm run generate)`, async () => {
      const actual = await readFile(join(root, path), 'utf8').catch(() => '<missing>');
      expect(actual, `${path} is stale: run npm run generate and commit the result`).toBe(expected);
    });
  }
});
