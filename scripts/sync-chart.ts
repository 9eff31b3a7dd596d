// Keeps the Helm chart in step with its sources: the CRDs generated from src/api (crds/) and the RBAC
// rules of config/rbac/. `node scripts/sync-chart.ts --check` exits 1 when the chart is stale; the unit
// test test/unit/chart/chart-sync.test.ts runs the same comparison.

import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';

const root = fileURLToPath(new URL('..', import.meta.url));
const chart = `${root}charts/vdisk-operator/`;

function rulesOf(path: string): string {
  const role = parse(readFileSync(`${root}${path}`, 'utf8')) as { rules: unknown[] };
  return stringify(role.rules);
}

/** Every file the chart copies, with the content it should have. */
export function chartCopies(): Array<{ path: string; content: string }> {
  const copies = readdirSync(`${root}crds`)
    .filter((name) => name.endsWith('.yaml'))
    .sort()
    .map((name) => ({ path: `${chart}crds/${name}`, content: readFileSync(`${root}crds/${name}`, 'utf8') }));
  copies.push({ path: `${chart}files/controller-rules.yaml`, content: rulesOf('config/rbac/role.yaml') });
  copies.push({
    path: `${chart}files/leader-election-rules.yaml`,
    content: rulesOf('config/rbac/leader_election_role.yaml'),
  });
  return copies;
}

function readOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const copy of chartCopies()) {
    if (readOrEmpty(copy.path) === copy.content) continue;
    if (check) {
      process.stderr.write(`${copy.path.slice(root.length)} is stale: run node scripts/sync-chart.ts\n`);
      stale++;
    } else {
      writeFileSync(copy.path, copy.content);
      process.stdout.write(`wrote ${copy.path.slice(root.length)}\n`);
    }
  }
  process.exitCode = stale > 0 ? 1 : 0;
}
