// Streams: `vdisk convert -O qcow2 src.raw - | cat > out` and `cat base.qcow2 | vdisk convert -f qcow2 -
// out.raw` (issue 3). qemu-img cannot write to or read from a pipe, so its file-to-file convert of the
// same data is shown beside for scale. Peak RSS is the pipeline's (GNU time reports the largest
// process), which shows that memory stays bounded whatever the guest size.

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { measureProcess, type ProcessCost } from './measure-process.ts';

const VDISK_BIN = join(import.meta.dirname, '../bin/vdisk.mjs');

export async function streamBench(options: {
  path: (name: string) => string;
  best: (measure: () => Promise<ProcessCost>) => Promise<ProcessCost>;
  log: (line: string) => void;
}): Promise<string> {
  const { path, best, log } = options;
  const vdisk = `"${process.execPath}" "${VDISK_BIN}"`;
  const rows = [
    {
      name: 'raw -> qcow2 to a pipe',
      qemu: ['convert', '-f', 'raw', '-O', 'qcow2', path('src.raw'), path('q-stream.qcow2')],
      script: `${vdisk} convert -f raw -O qcow2 "${path('src.raw')}" - | cat > "${path('v-stream.qcow2')}"`,
      verify: [path('src.raw'), path('v-stream.qcow2')],
    },
    {
      name: 'qcow2 from a pipe -> raw',
      qemu: ['convert', '-f', 'qcow2', '-O', 'raw', path('base.qcow2'), path('q-stream.raw')],
      script: `cat "${path('base.qcow2')}" | ${vdisk} convert -f qcow2 - "${path('v-stream.raw')}"`,
      verify: [path('src.raw'), path('v-stream.raw')],
    },
  ];
  const lines = ['', 'streams (qemu-img has none: its file-to-file convert for scale)'];
  for (const row of rows) {
    log(`bench: ${row.name}`);
    const qemu = await best(() => measureProcess('qemu-img', row.qemu));
    const ours = await best(() => measureProcess('bash', ['-o', 'pipefail', '-c', row.script]));
    let note = ours.exitCode === 0 ? '' : `  (vdisk exited ${ours.exitCode}: ${ours.stderr.trim()})`;
    try {
      execFileSync('qemu-img', ['compare', ...row.verify], { stdio: 'ignore' });
    } catch {
      note += '  (vdisk output DIFFERS)';
    }
    lines.push(
      `${row.name.padEnd(30)}  qemu ${qemu.seconds.toFixed(3)} s ${qemu.peakRssMib.toFixed(0)} MiB  vdisk ${ours.seconds.toFixed(3)} s ${ours.peakRssMib.toFixed(0)} MiB${note}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
