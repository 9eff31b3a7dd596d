// The image commands through runCli, in-process on small raw files: --help, usage errors and their
// exit statuses, check's exit-status mapping, -p progress lines, and output shapes that need no oracle.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkExitCode, checkHuman, checkJson } from '../../../../src/cli/commands/check.ts';
import { runVdisk as vdisk } from '../../../helpers/run-vdisk.ts';
import { progressPrinter } from '../../../../src/cli/progress.ts';
import type { CheckReport } from '../../../../src/engine/formats/driver.ts';

let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'vdisk-cli-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

const report = (overrides: Partial<CheckReport>): CheckReport => ({
  issues: [],
  leaks: 0,
  corruptions: 0,
  checkErrors: 0,
  leaksFixed: 0,
  corruptionsFixed: 0,
  ...overrides,
});

describe('image commands', () => {
  it('print --help with a usage line and exit 0', async () => {
    for (const name of ['create', 'info', 'convert', 'check', 'compare', 'map', 'measure']) {
      const result = await vdisk([name, '--help']);
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`^usage: vdisk ${name} `));
    }
    expect((await vdisk(['--help'])).stdout).toContain('convert [-c] [-p]');
  });

  it('reject bad options with exit 1 and a vdisk: message', async () => {
    const path = join(folder, 'x.raw');
    expect(await vdisk(['create', '-f', 'raw', path, '1M'])).toMatchObject({ code: 0 });
    expect(await vdisk(['info', '-Z', path])).toEqual({
      code: 1,
      stdout: '',
      stderr: "vdisk: invalid option -- 'Z'\n",
    });
    expect(await vdisk(['info', '--output=xml', path])).toMatchObject({
      code: 1,
      stderr: 'vdisk: --output must be used with human or json as argument.\n',
    });
    expect(await vdisk(['convert', '-m', '0', path, join(folder, 'y.raw')])).toMatchObject({
      code: 1,
      stderr: expect.stringContaining('between 1 and 16'),
    });
    expect(await vdisk(['convert', '-S', '1000', path, join(folder, 'y.raw')])).toMatchObject({
      code: 1,
      stderr: expect.stringContaining('multiples of 512'),
    });
    expect(await vdisk(['measure', '--size', '1M', path])).toMatchObject({ code: 1 });
    expect(await vdisk(['create', '-f', 'nosuchformat', join(folder, 'z.img'), '1M'])).toMatchObject({
      code: 1,
      stderr: expect.stringContaining("Unknown file format 'nosuchformat'"),
    });
    expect(await vdisk(['create', '-f', 'qcow2', '-b', path, join(folder, 'o.qcow2')])).toMatchObject({
      code: 1,
      stderr: expect.stringContaining('without backing format'),
    });
  });

  it('compare exits 2 on usage errors and missing files', async () => {
    expect((await vdisk(['compare', join(folder, 'x.raw')])).code).toBe(2);
    expect((await vdisk(['compare', join(folder, 'x.raw'), join(folder, 'missing.raw')])).code).toBe(2);
  });

  it('lists a format’s create options for -o help', async () => {
    const result = await vdisk(['create', '-f', 'raw', '-o', 'help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('Supported raw options:\n  size=<size>');
    expect(result.stdout).toContain('preallocation=<str>');
  });

  it('maps check reports to exit statuses 0, 1, 2, 3 and to qemu’s summary', () => {
    expect(checkExitCode(report({}))).toBe(0);
    expect(checkExitCode(report({ leaks: 2 }))).toBe(3);
    expect(checkExitCode(report({ leaks: 2, corruptions: 1 }))).toBe(2);
    expect(checkExitCode(report({ checkErrors: 1, corruptions: 1 }))).toBe(1);
    expect(
      checkHuman(report({ leaks: 2, totalClusters: 16, allocatedClusters: 3, imageEndOffsetBytes: 4096 })),
    ).toBe(
      '\n2 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n3/16 = 18.75% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 4096\n',
    );
    expect(checkJson('a.qcow2', 'qcow2', report({ leaks: 2 }))).toEqual({
      filename: 'a.qcow2',
      format: 'qcow2',
      'check-errors': 0,
      leaks: 2,
    });
  });

  it('draws progress with carriage returns on a terminal and lines elsewhere', () => {
    for (const isTty of [true, false]) {
      let out = '';
      const printer = progressPrinter({ stdout: (t) => (out += t), stderr: () => undefined, isTty }, true);
      printer.update(1, 3);
      printer.update(1, 3);
      printer.update(2, 3);
      printer.end();
      const end = isTty ? '\r' : '\n';
      expect(out).toBe(
        `    (0.00/100%)${end}    (33.33/100%)${end}    (66.67/100%)${end}    (100.00/100%)${end}${isTty ? '\n' : ''}`,
      );
    }
  });
});
