// Runs the real attach agent (src/agent/attach/main.ts) on the host with its node commands executed
// inside the node tier's VM. Usage: node agent-in-vm.ts VM_COMMAND_SOCKET TRANSCRIPT|- -- ATTACH_ARGV...
// With a TRANSCRIPT path, every command and result is saved as JSON when the agent exits.

import { writeFileSync } from 'node:fs';
import { main } from '../../../src/agent/attach/main.ts';
import { RecordingRunner } from '../../../src/agent/attach/runner.ts';
import { VmRunner } from './vm-runner.ts';

const [socketPath = '', transcriptPath = '-', separator, ...argv] = process.argv.slice(2);
if (separator !== '--') {
  process.stderr.write('usage: agent-in-vm.ts VM_COMMAND_SOCKET TRANSCRIPT|- -- ATTACH_ARGV...\n');
  process.exit(2);
}
const vm = new VmRunner(socketPath);
const recording = new RecordingRunner(vm);
const code = await main(argv, {
  runner: recording,
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
});
if (transcriptPath !== '-') writeFileSync(transcriptPath, `${JSON.stringify(recording.entries, null, 1)}\n`);
vm.close();
process.exit(code);
