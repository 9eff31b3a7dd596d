// Serving the opened image to the node's nbd-client: vdisk's in-process NBD server on a unix socket
// (one export, shared by every connection, flushed on close). Injectable, so unit tests and the
// node tier can swap the server without touching the attach sequence.

import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BlockDevice } from '../../engine/block-device.ts';
import { startNbdServer } from '../../nbd/server.ts';
import type { NbdLogger } from '../../nbd/transmission.ts';

export interface ServeRequest {
  device: BlockDevice;
  /** The image as the agent opened it (for servers that open the file themselves). */
  imagePath: string;
  format: string;
  readOnly: boolean;
  socketPath: string;
  exportName: string;
  /** Control-path logging of the server (connections, handshakes); silent when absent. */
  log?: NbdLogger;
}

export interface RunningServer {
  /** Stops accepting, drains and flushes connections, removes the socket. */
  close(): Promise<void>;
}

export type ServeFn = (request: ServeRequest) => Promise<RunningServer>;

/** vdisk's own NBD server, persistent (the kernel may reconnect), writes passed through with FUA and FLUSH honoured. */
export const serveInProcess: ServeFn = async (request) => {
  await mkdir(dirname(request.socketPath), { recursive: true, mode: 0o700 });
  const handle = await startNbdServer({
    socketPath: request.socketPath,
    persistent: true,
    ...(request.log ? { log: request.log } : {}),
    exports: [
      { name: request.exportName, device: request.device, readOnly: request.readOnly, discard: true },
    ],
  });
  return { close: () => handle.close() };
};
