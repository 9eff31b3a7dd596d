// A CommandRunner that replays a transcript recorded in the node tier's VM (test/node, with
// VDISK_NODE_TRANSCRIPT_DIR set): each command must be the next one recorded, and gets the recorded
// result. Paths that differ per run (the image's temp folder) are mapped from the recorded ones to
// this run's with `substitutions` (applied to the transcript's side, in order).

import { readFileSync } from 'node:fs';
import type {
  CommandResult,
  CommandRunner,
  RunOptions,
  TranscriptEntry,
} from '../../../../src/agent/attach/runner.ts';

export class ReplayRunner implements CommandRunner {
  readonly entries: TranscriptEntry[];
  position = 0;
  private readonly substitutions: Array<[string, string]>;

  constructor(entries: TranscriptEntry[], substitutions: Array<[string, string]> = []) {
    this.entries = entries;
    this.substitutions = substitutions;
  }

  static load(path: URL, substitutions: Array<[string, string]> = []): ReplayRunner {
    return new ReplayRunner(JSON.parse(readFileSync(path, 'utf8')) as TranscriptEntry[], substitutions);
  }

  private normalize(text: string | undefined): string | undefined {
    let result = text;
    for (const [from, to] of this.substitutions) result = result?.split(from).join(to);
    return result;
  }

  async run(command: string, args: readonly string[], options?: RunOptions): Promise<CommandResult> {
    const expected = this.entries[this.position];
    const actual = [command, ...args].join(' ');
    if (!expected)
      throw new Error(`command #${this.position + 1} '${actual}' is past the end of the transcript`);
    const wanted = this.normalize([expected.command, ...expected.args].join(' '));
    if (actual !== wanted || options?.input !== this.normalize(expected.input)) {
      throw new Error(
        `command #${this.position + 1}: ran '${actual}' (input ${JSON.stringify(options?.input)}), transcript has '${wanted}' (input ${JSON.stringify(expected.input)})`,
      );
    }
    this.position++;
    return expected.result;
  }

  get finished(): boolean {
    return this.position === this.entries.length;
  }
}

/** A runner answering by rule (first matching prefix wins) and recording every command line. */
export class ScriptedRunner implements CommandRunner {
  readonly calls: string[] = [];
  private readonly rules: Array<[RegExp, CommandResult | ((line: string) => CommandResult)]>;

  constructor(rules: Array<[RegExp, CommandResult | ((line: string) => CommandResult)]>) {
    this.rules = rules;
  }

  async run(command: string, args: readonly string[]): Promise<CommandResult> {
    const line = [command, ...args].join(' ');
    this.calls.push(line);
    const rule = this.rules.find(([pattern]) => pattern.test(line));
    if (!rule) return { exitCode: 0, stdout: '', stderr: '' };
    return typeof rule[1] === 'function' ? rule[1](line) : rule[1];
  }
}

export const ok = (stdout = ''): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
export const fail = (exitCode = 1, stderr = 'failed'): CommandResult => ({ exitCode, stdout: '', stderr });
