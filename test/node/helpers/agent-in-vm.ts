// Runs the real attach agent (src/agent/attach/main.ts) on the host with its node commands executed
// inside the node tier's VM. Usage: node agent-in-vm.ts VM_COMMAND_SOCKET TRANSCRIPT|- -- ATTACH_ARGV...
// With a TRANSCRIPT path, every command and result is saved as JSON when the agent exits. With
// VDISK_AGENT_DIE_BEFORE=<command> the process SIGKILLs itself just before running that command the
// first time: a crash at an exact step of the attach sequence.

import { writeFileSync } from 'node:fs';
import { main } from '../../../src/agent/attach/main.ts';
import { type CommandRunner, RecordingRunner } from '../../../src/agent/attach/runner.ts';
import { VmRunner } from './vm-runner.ts';

const [socketPath = '', transcriptPath = '-', separator, ...argv] = process.argv.slice(2);
if (separator !== '--') {
  process.stderr.write('usage: agent-in-vm.ts VM_COMMAND_SOCKET TRANSCRIPT|- -- ATTACH_ARGV...\n');
  process.exit(2);
}
const vm = new VmRunner(socketPath);
const dieBefore = process.env.VDISK_AGENT_DIE_BEFORE;
const runner: CommandRunner = dieBefore
  ? {
      run(command, args, options) {
        if (command === dieBefore) process.kill(process.pid, 'SIGKILL');
        return vm.run(command, args, options);
      },
    }
  : vm;
const recording = new RecordingRunner(runner);
const code = await main(argv, {
  runner: recording,
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
});
if (transcriptPath !== '-') writeFileSync(transcriptPath, `${JSON.stringify(recording.entries, null, 1)}\n`);
vm.close();
process.exit(code);
