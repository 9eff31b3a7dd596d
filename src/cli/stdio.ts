// The CLI's own output: write(2) on descriptors 1 and 2 instead of process.stdout/stderr. Creating
// those streams loads Node's stream modules, ~1.5 ms of a ~40 ms `vdisk check` (qemu-img's takes
// 5 ms). A descriptor that would block (a non-blocking pipe) is handed to the stream, which waits
// for it, and stays with the stream so output keeps its order; a closed pipe ends output quietly,
// as qemu-img ends on SIGPIPE.

import { writeSync } from 'node:fs';

/** A writer for descriptor `fd`; `stream` is its process stream, created only if ever needed. */
export function descriptorWriter(fd: number, stream: () => NodeJS.WritableStream): (text: string) => void {
  let viaStream = false;
  let closed = false;
  return (text) => {
    if (closed || text === '') return;
    if (viaStream) {
      stream().write(text);
      return;
    }
    const bytes = Buffer.from(text);
    let done = 0;
    try {
      while (done < bytes.length) done += writeSync(fd, bytes, done);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'EPIPE') {
        closed = true;
        return;
      }
      if (code !== 'EAGAIN') throw err;
      viaStream = true;
      stream().write(bytes.subarray(done));
    }
  };
}
