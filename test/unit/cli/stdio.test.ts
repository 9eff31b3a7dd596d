// descriptorWriter (src/cli/stdio.ts): the CLI's stdout/stderr without Node's stream objects. Output
// must arrive whole and in order through a file and through a pipe a slow reader drains, and a reader
// that goes away must end the output quietly, not crash the command.

import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { descriptorWriter } from '../../../src/cli/stdio.ts';

const STDIO = join(import.meta.dirname, '../../../src/cli/stdio.ts');
const folder = mkdtempSync(join(tmpdir(), 'vdisk-stdio-'));
afterAll(() => rmSync(folder, { recursive: true, force: true }));

/**
 * Runs a child that writes `lines` numbered lines through descriptorWriter(1), then 'done' on fd 2.
 * With `nonBlocking` the child first creates process.stdout, which puts the pipe in non-blocking
 * mode: a full pipe then answers EAGAIN and the writer must hand over to the stream.
 */
function writerChild(lines: number, nonBlocking = false): ReturnType<typeof spawn> {
  const script = `
    import { descriptorWriter } from ${JSON.stringify(STDIO)};
    ${nonBlocking ? 'process.stdout;' : ''}
    const out = descriptorWriter(1, () => process.stdout);
    for (let line = 0; line < ${lines}; line++) out('line ' + line + ' ' + 'x'.repeat(100) + '\\n');
    process.getBuiltinModule('node:fs').writeSync(2, 'done\\n');`;
  return spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function expectedLines(lines: number): string {
  return Array.from({ length: lines }, (_, line) => `line ${line} ${'x'.repeat(100)}\n`).join('');
}

describe('descriptorWriter', () => {
  it('writes everything, in order, to a file', () => {
    const path = join(folder, 'out.txt');
    const fd = openSync(path, 'w');
    const write = descriptorWriter(fd, () => {
      throw new Error('a file never needs the stream');
    });
    const text = 'é'.repeat(300_000);
    write('first\n');
    write('');
    write(text);
    closeSync(fd);
    expect(readFileSync(path, 'utf8')).toBe(`first\n${text}`);
  });

  it.each([
    ['blocking', false],
    ['non-blocking', true],
  ])('writes everything, in order, through a %s pipe larger than its buffer', async (_mode, nonBlocking) => {
    const lines = 20_000; // ~2 MiB, many times a pipe's 64 KiB
    const child = writerChild(lines, nonBlocking);
    const chunks: Buffer[] = [];
    // A slow reader: the pipe fills, so writes block (or answer EAGAIN) many times.
    child.stdout?.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      child.stdout?.pause();
      setTimeout(() => child.stdout?.resume(), 1);
    });
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    expect(Buffer.concat(chunks).toString()).toBe(expectedLines(lines));
  });

  it('ends quietly when the reader closes the pipe', async () => {
    const child = writerChild(20_000);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.stdout?.once('data', () => child.stdout?.destroy());
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(stderr).toBe('done\n');
    expect(code).toBe(0);
  });
});
