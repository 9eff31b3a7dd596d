// The chart ships copies of crds/ and of config/rbac's rules (Helm can only read files inside the
// chart); this fails when either source changed without `node scripts/sync-chart.ts`.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chartCopies } from '../../../scripts/sync-chart.ts';

describe('Helm chart copies', () => {
  for (const copy of chartCopies()) {
    it(`${copy.path.replace(/.*charts\//, 'charts/')} equals its source`, () => {
      expect(readFileSync(copy.path, 'utf8')).toBe(copy.content);
    });
  }
});
