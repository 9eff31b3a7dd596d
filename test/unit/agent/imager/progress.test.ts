// The imager's progress lines: rate-limited to whole-percent steps (or one every two seconds), 100
// always written once, and read back by the controller's parser (anything else is not progress).
import { describe, expect, it } from 'vitest';
import {
  parseProgressLine,
  progressLine,
  progressPrinter,
  stage,
} from '../../../../src/agent/imager/progress.ts';
import { parseAttachLine } from '../../../../src/controller/pod-reports.ts';

describe('imager progress lines', () => {
  it('writes whole-percent steps, a slow creep every two seconds, and 100 once', () => {
    const lines: string[] = [];
    let nowMs = 0;
    const sink = progressPrinter(
      (line) => lines.push(line),
      () => nowMs,
    );
    for (let tenth = 0; tenth <= 25; tenth++) sink(tenth / 10);
    expect(lines.map((line) => parseProgressLine(line.trimEnd()))).toEqual([0, 1, 2]);
    sink(2.3);
    nowMs = 2_500;
    sink(2.4);
    expect(parseProgressLine(lines.at(-1)!.trimEnd())).toBe(2.4);
    sink(1); // never backwards
    sink(100);
    sink(100);
    expect(lines.map((line) => parseProgressLine(line.trimEnd()))).toEqual([0, 1, 2, 2.4, 100]);
  });

  it('maps a stage fraction onto its share of the whole and clamps it', () => {
    const seen: number[] = [];
    const second = stage((percent) => seen.push(percent), 50, 100);
    second(0);
    second(0.5);
    second(2);
    expect(seen).toEqual([50, 75, 100]);
  });

  it('parses only its own lines, in range', () => {
    expect(parseProgressLine(progressLine(33.333).trimEnd())).toBe(33.3);
    expect(parseProgressLine('{"progress":101}')).toBeUndefined();
    expect(parseProgressLine('{"progress":"12"}')).toBeUndefined();
    expect(parseProgressLine('{"msg":"hello"}')).toBeUndefined();
    expect(parseProgressLine('{"progress":')).toBeUndefined();
  });
});

describe('attach report lines', () => {
  it('takes the Attached report and keeps only the fields status.attachment holds', () => {
    const line = JSON.stringify({
      phase: 'Attached',
      device: '/dev/nbd1',
      partitions: [
        {
          number: 1,
          name: 'nbd1p1',
          path: '/dev/mapper/nbd1p1',
          start: 512,
          size: 1024,
          mountPath: '/mnt/a',
        },
        { number: 2, name: 'nbd1p2', start: 'bad', size: 1 },
        { number: 3, name: 'nbd1p3', start: -512, size: 1 },
      ],
    });
    expect(parseAttachLine(line)).toEqual({
      device: '/dev/nbd1',
      partitions: [{ name: 'nbd1p1', start: 512, size: 1024, mountPath: '/mnt/a' }],
    });
  });

  it('ignores the detach report, failures, log lines and broken JSON', () => {
    expect(parseAttachLine(JSON.stringify({ phase: 'Detached', device: '/dev/nbd1' }))).toBeUndefined();
    expect(parseAttachLine(JSON.stringify({ phase: 'Attached', device: '' }))).toBeUndefined();
    expect(parseAttachLine('{"level":30,"msg":"Attached"}')).toBeUndefined();
    expect(parseAttachLine('{"phase":"Attached",')).toBeUndefined();
  });
});
