// One vdisk command timed in a warm process: it runs --rounds times in this one Node.js process, the
// first round untimed (V8 compiles what it runs), and the fastest later round is printed in seconds on
// stdout. That is what the engine costs once Node.js has started and the code is compiled, as in the
// operator's long-running pods; bench/run.ts and bench/qcow2-ops.ts print it beside the whole-process
// times, so a row shows how much of a gap is start-up and warm-up and how much the work itself.
// Usage: node bench/warm-run.ts [--rounds=N] [--fresh=SRC:DST]... -- <vdisk arguments>
// --fresh copies SRC over DST (sparse, untimed) before every round: snapshot -c needs an image without
// the snapshot each time. A round that fails ends the run with its exit code and message.

import { execFileSync } from 'node:child_process';
import { runCli } from '../src/cli/main.ts';

const separator = process.argv.indexOf('--');
const options = process.argv.slice(2, separator < 0 ? undefined : separator);
const argv = separator < 0 ? [] : process.argv.slice(separator + 1);
const rounds = Math.max(2, Number(options.find((arg) => arg.startsWith('--rounds='))?.slice(9) ?? 4));
const fresh = options
  .filter((arg) => arg.startsWith('--fresh='))
  .map((arg) => arg.slice('--fresh='.length).split(':') as [string, string]);
if (argv.length === 0) {
  process.stderr.write(
    'usage: node bench/warm-run.ts [--rounds=N] [--fresh=SRC:DST]... -- <vdisk arguments>\n',
  );
  process.exit(2);
}

let stderr = '';
const io = {
  stdout: () => undefined,
  stderr: (text: string) => {
    stderr += text;
  },
  isTty: false,
};
let best = Number.POSITIVE_INFINITY;
for (let round = 0; round < rounds; round++) {
  for (const [from, to] of fresh) execFileSync('cp', ['--sparse=always', from, to]);
  const started = performance.now();
  const code = await runCli(argv, io);
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0) {
    process.stderr.write(`warm-run: vdisk ${argv.join(' ')} exited ${code}: ${stderr}`);
    process.exit(code);
  }
  if (round > 0) best = Math.min(best, seconds);
}
process.stdout.write(`${best}\n`);
