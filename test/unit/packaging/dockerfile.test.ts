// No Dockerfile linter ships in Debian 12 (hadolint is not packaged) and no Docker engine runs here, so
// this parses the Dockerfile and checks what the design asks of the image: a multi-stage build on
// Node.js 24 slim, exactly the attach tools, a non-root user, the agent entrypoint, lockfile installs,
// and a .dockerignore that lets in only what the image needs.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '..', '..', '..');

interface Instruction {
  keyword: string;
  argument: string;
  line: number;
}

/** Joins continuation lines, drops comments and blank lines, splits into keyword + argument. */
function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let pending = '';
  let startLine = 0;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) return;
    if (pending === '') startLine = index + 1;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      return;
    }
    const whole = `${pending}${line}`.trim();
    pending = '';
    const match = /^(\w+)\s+(.*)$/s.exec(whole);
    if (match)
      instructions.push({
        keyword: (match[1] ?? '').toUpperCase(),
        argument: match[2] ?? '',
        line: startLine,
      });
  });
  return instructions;
}

const instructions = parseDockerfile(readFileSync(join(REPO, 'Dockerfile'), 'utf8'));
const stages = instructions.filter((instruction) => instruction.keyword === 'FROM');
const finalStageStart = instructions.lastIndexOf(stages[stages.length - 1] as Instruction);
const finalStage = instructions.slice(finalStageStart);

describe('Dockerfile', () => {
  it('builds in stages on Node.js 24 LTS slim', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) expect(stage.argument).toMatch(/^node:24(\.\d+)*-\w+-slim\b/);
  });

  it('installs exactly the tools the attach agent and the imager run, without recommends, and cleans apt lists', () => {
    const installs = finalStage.filter((i) => i.keyword === 'RUN' && i.argument.includes('apt-get install'));
    expect(installs).toHaveLength(1);
    const run = installs[0]?.argument ?? '';
    expect(run).toContain('--no-install-recommends');
    expect(run).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
    const packages =
      /apt-get install -y --no-install-recommends ([^&]+)/.exec(run)?.[1]?.trim().split(/\s+/) ?? [];
    expect(packages.sort()).toEqual(
      [
        'btrfs-progs',
        'dosfstools',
        'e2fsprogs',
        'kpartx',
        'nbd-client',
        'util-linux',
        'xfsprogs',
        'xz-utils',
      ].sort(),
    );
  });

  it('runs as a non-root user by default with the agent as entrypoint', () => {
    const user = finalStage.filter((i) => i.keyword === 'USER').pop();
    expect(user?.argument).toMatch(/^[1-9]\d*(:[1-9]\d*)?$/);
    expect(finalStage.find((i) => i.keyword === 'ENTRYPOINT')?.argument).toBe('["vdisk-agent"]');
    expect(finalStage.find((i) => i.keyword === 'CMD')?.argument).toBe('["controller"]');
  });

  it('installs production dependencies only, from the lockfile', () => {
    const npm = instructions.find((i) => i.keyword === 'RUN' && i.argument.includes('npm '));
    expect(npm?.argument).toMatch(/npm ci --omit=dev/);
  });

  it('copies only paths that exist and that .dockerignore lets in', () => {
    const ignore = readFileSync(join(REPO, '.dockerignore'), 'utf8');
    const allowed = [...ignore.matchAll(/^!(\S+?)\/?$/gm)].map((match) => match[1]);
    const copies = instructions.filter((i) => i.keyword === 'COPY' && !i.argument.startsWith('--from'));
    expect(copies.length).toBeGreaterThan(0);
    for (const copy of copies) {
      const sources = copy.argument.split(/\s+/).slice(0, -1);
      for (const source of sources) {
        expect(existsSync(join(REPO, source)), `${source} exists`).toBe(true);
        expect(allowed, `${source} is allowed by .dockerignore`).toContain(source.replace(/\/$/, ''));
      }
    }
  });

  it('links both commands the pods run onto PATH', () => {
    const links = finalStage
      .filter((i) => i.keyword === 'RUN' && i.argument.includes('ln -s'))
      .map((i) => i.argument)
      .join(' ');
    expect(links).toContain('/app/bin/vdisk.mjs /usr/local/bin/vdisk');
    expect(links).toContain('/app/bin/vdisk-agent.mjs /usr/local/bin/vdisk-agent');
    expect(existsSync(join(REPO, 'bin', 'vdisk-agent.mjs'))).toBe(true);
  });
});
