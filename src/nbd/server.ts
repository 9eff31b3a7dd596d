// The NBD server as qemu-nbd runs it: unix-socket and TCP listeners (TCP binds 127.0.0.1 unless told
// otherwise), a connection limit, a handshake time limit, optional TLS, and graceful shutdown (stop
// accepting, let in-flight requests finish and reply, flush, close). With static-read.ts (which moves
// a connection to a socket reading into a reused buffer), the only files importing node:net.

import { lstat, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createSecureContext, type SecureContextOptions, TLSSocket } from 'node:tls';
import { nativeFileOps } from '../engine/io/native.ts';
import { NbdBackend, type NbdExport } from './backend.ts';
import { ByteBudget } from './byte-budget.ts';
import { HandshakeAbortedError, negotiate } from './handshake.ts';
import {
  type NbdLogger,
  silentLogger,
  TransmissionSession,
  type TransmissionLimits,
} from './transmission.ts';
import { StreamClosedError } from './byte-reader.ts';
import { enlargeSendBuffer, preloadSendBuffer } from './send-buffer.ts';
import { moveToStaticReads, preloadStaticRead } from './static-read.ts';

export type { NbdExport } from './backend.ts';

/** TLS for STARTTLS: x509 (key + cert, optionally client certs checked against `ca`) or PSK. */
export interface NbdTlsOptions {
  /** PEM private key and certificate chain (x509 mode). */
  key?: string | Buffer;
  cert?: string | Buffer;
  /** Verify client certificates against these CAs (qemu's verify-peer=on). */
  ca?: string | Buffer;
  requireClientCert?: boolean;
  /** PSK mode: identity -> key (qemu's tls-creds-psk keys file, `identity:hexkey` per line). */
  pskKeys?: ReadonlyMap<string, Buffer>;
  /** Refuse every option but STARTTLS until TLS is up (default true, as qemu-nbd with --tls-creds). */
  required?: boolean;
}

export interface NbdServerOptions {
  exports: readonly NbdExport[];
  /** Listen on this unix socket (qemu-nbd -k). Exactly one of socketPath or port. */
  socketPath?: string;
  /** TCP port (qemu-nbd -p); 0 picks a free one. */
  port?: number;
  /** TCP bind address (qemu-nbd -b), default 127.0.0.1. */
  host?: string;
  /** Most simultaneous clients (qemu-nbd -e), default 100; more wait for a slot (up to 64, then refused). */
  maxConnections?: number;
  /** Keep serving after the last client leaves (qemu-nbd -t). Default true for the API. */
  persistent?: boolean;
  /** A client must finish the handshake within this time (qemu-nbd --handshake-limit), default 10 s. */
  handshakeTimeoutMs?: number;
  tls?: NbdTlsOptions;
  limits?: Partial<TransmissionLimits>;
  /** Request bytes all connections together may have in flight (default 256 MiB). */
  maxInFlightBytesTotal?: number;
  log?: NbdLogger;
}

export interface NbdServerHandle {
  /** Where clients connect. */
  address: { socketPath: string } | { host: string; port: number };
  /** An NBD URI for the first export (`nbd+unix:///name?socket=...` or `nbd://host:port/name`). */
  uri: string;
  /** Open client connections. */
  readonly connectionCount: number;
  /** Stops accepting, drains and flushes every connection, removes the unix socket. Idempotent. */
  close(): Promise<void>;
  /** Resolves once the server has stopped (after close(), or after the last client when not persistent). */
  closed: Promise<void>;
}

/** Clients queued beyond the connection limit; more are refused at accept. */
const MAX_WAITING_CLIENTS = 64;

function uriFor(address: NbdServerHandle['address'], exportName: string): string {
  const path = encodeURIComponent(exportName);
  if ('socketPath' in address) return `nbd+unix:///${path}?socket=${address.socketPath}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${path}`;
}

async function removeStaleSocket(path: string): Promise<void> {
  try {
    if ((await lstat(path)).isSocket()) await unlink(path);
  } catch {
    // Absent: nothing to remove. Anything else surfaces at listen().
  }
}

function makeTlsUpgrade(options: NbdTlsOptions): (socket: Duplex) => Promise<Duplex> {
  const psk = options.pskKeys;
  const contextOptions: SecureContextOptions = psk
    ? { ciphers: 'PSK', maxVersion: 'TLSv1.2' }
    : { key: options.key, cert: options.cert, ca: options.ca };
  const secureContext = createSecureContext(contextOptions);
  return (socket) =>
    new Promise((resolve, reject) => {
      const tlsSocket = new TLSSocket(
        socket as Socket,
        {
          isServer: true,
          secureContext,
          requestCert: Boolean(options.requireClientCert),
          rejectUnauthorized: Boolean(options.requireClientCert),
          ...(psk
            ? { pskCallback: (_socket: TLSSocket, identity: string) => psk.get(identity) ?? null }
            : {}),
        } as ConstructorParameters<typeof TLSSocket>[1],
      );
      tlsSocket.once('secure', () => resolve(tlsSocket));
      tlsSocket.once('error', reject);
      // A client that drops (or is dropped by the handshake timer) mid-TLS may close without an error.
      tlsSocket.once('close', () =>
        reject(new StreamClosedError('the client left during the TLS handshake')),
      );
    });
}

/** Starts serving `exports`; resolves once listening. All connections to an export share its device. */
export async function startNbdServer(options: NbdServerOptions): Promise<NbdServerHandle> {
  if ((options.socketPath === undefined) === (options.port === undefined)) {
    throw new Error('startNbdServer: give exactly one of socketPath or port');
  }
  if (options.exports.length === 0) throw new Error('startNbdServer: no exports');
  const log = options.log ?? silentLogger;
  const backends = new Map(
    options.exports.map((exportConfig) => [exportConfig.name, new NbdBackend(exportConfig)]),
  );
  const tls = options.tls
    ? { upgrade: makeTlsUpgrade(options.tls), required: options.tls.required ?? true }
    : undefined;
  const persistent = options.persistent ?? true;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
  const sessions = new Set<TransmissionSession>();
  const budget = new ByteBudget(options.maxInFlightBytesTotal ?? 256 * 1024 * 1024);
  const sockets = new Set<Socket>();
  let shuttingDown = false;
  let connectionNumber = 0;
  let closing: Promise<void> | undefined;
  let resolveClosed: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => {
    resolveClosed = resolve;
  });

  const maxConnections = options.maxConnections ?? 100;
  // Clients over the limit wait, un-greeted, for a slot (as qemu-nbd leaves them in its accept backlog).
  const waiting: Socket[] = [];
  let activeConnections = 0;

  /** Counts a connection's socket until it closes (the last one closing stops a non-persistent server). */
  function track(socket: Socket): void {
    sockets.add(socket);
    socket.once('close', () => {
      sockets.delete(socket);
      const waitingIndex = waiting.indexOf(socket);
      if (waitingIndex >= 0) waiting.splice(waitingIndex, 1);
      if (!persistent && sockets.size === 0 && !shuttingDown) void handle.close();
    });
  }

  const server: Server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    track(socket);
    if (options.socketPath !== undefined) enlargeSendBuffer(socket);
    if (activeConnections < maxConnections) {
      begin(socket);
    } else if (waiting.length < MAX_WAITING_CLIENTS) {
      socket.on('error', () => undefined);
      waiting.push(socket);
    } else {
      socket.destroy();
    }
  });

  function begin(socket: Socket): void {
    activeConnections++;
    void serveConnection(socket, ++connectionNumber).finally(() => {
      activeConnections--;
      while (activeConnections < maxConnections && waiting.length > 0 && !shuttingDown) {
        const next = waiting.shift()!;
        if (!next.destroyed) begin(next);
      }
    });
  }

  async function serveConnection(socket: Socket, conn: number): Promise<void> {
    /** The socket the connection is on now (moveToStaticReads may replace the accepted one). */
    let current = socket;
    const connectionLog = log.child ? log.child({ conn }) : log;
    socket.on('error', (err) => connectionLog.debug({ err }, 'Socket error'));
    const timer = setTimeout(() => {
      connectionLog.warn({ handshakeTimeoutMs }, 'Handshake timed out');
      socket.destroy();
    }, handshakeTimeoutMs);
    try {
      let session = await negotiate(socket, { exports: backends, tls, isShuttingDown: () => shuttingDown });
      clearTimeout(timer);
      if (!session) return;
      // A plain connection continues on a socket that reads into one reused buffer (static-read.ts).
      const moved = session.socket === socket && !session.isTls ? moveToStaticReads(socket) : undefined;
      if (moved) {
        track(moved.socket);
        // The old socket is closing: one connection, one socket, from now on.
        sockets.delete(socket);
        moved.socket.on('error', (err) => connectionLog.debug({ err }, 'Socket error'));
        const leftover =
          moved.buffered.length === 0 ? session.leftover : Buffer.concat([session.leftover, moved.buffered]);
        session = { ...session, socket: moved.socket, leftover };
        current = moved.socket;
      } else if (session.socket !== socket) {
        session.socket.on('error', (err) => connectionLog.debug({ err }, 'TLS error'));
      }
      const sessionLog = connectionLog.child
        ? connectionLog.child({ export: session.exportName })
        : connectionLog;
      sessionLog.info({ structured: session.structuredReplies, tls: session.isTls }, 'Client connected');
      const transmission = new TransmissionSession(session, {
        limits: options.limits,
        log: sessionLog,
        budget,
        borrowedReads: moved,
      });
      sessions.add(transmission);
      if (shuttingDown) void transmission.shutdown('server shutting down');
      await transmission.start();
      sessions.delete(transmission);
      connectionLog.info({}, 'Client disconnected');
    } catch (err) {
      clearTimeout(timer);
      if (!(err instanceof StreamClosedError)) {
        connectionLog.warn(
          { err },
          err instanceof HandshakeAbortedError ? 'Handshake refused' : 'Connection failed',
        );
      }
      current.destroy();
    }
  }

  // The FFI the data path uses (SO_SNDBUF here, cached reads in engine/io/native.ts) loads before the
  // first client is accepted, not in its first requests: a fresh server's first copy is otherwise the
  // one that pays ~10 ms of module loading.
  if (options.socketPath !== undefined) preloadSendBuffer();
  preloadStaticRead();
  nativeFileOps();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const onListening = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (options.socketPath !== undefined) {
      removeStaleSocket(options.socketPath).then(
        () => server.listen(options.socketPath, onListening),
        reject,
      );
    } else {
      server.listen(options.port, options.host ?? '127.0.0.1', onListening);
    }
  });
  server.on('error', (err) => log.warn({ err }, 'Listener failed'));

  let address: NbdServerHandle['address'];
  if (options.socketPath !== undefined) {
    address = { socketPath: options.socketPath };
  } else {
    const bound = server.address();
    if (bound === null || typeof bound === 'string') throw new Error('startNbdServer: no TCP address');
    address = { host: bound.address, port: bound.port };
  }

  const handle: NbdServerHandle = {
    address,
    uri: uriFor(address, options.exports[0]!.name),
    get connectionCount() {
      return sockets.size;
    },
    closed,
    close() {
      closing ??= (async () => {
        shuttingDown = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        await Promise.all([...sessions].map((session) => session.shutdown('server shutting down')));
        // Clients still in the handshake get nothing more.
        for (const socket of sockets) socket.destroy();
        await stopped;
        await Promise.all(
          [...backends.values()].map((backend) =>
            backend.flush().catch((err: unknown) => log.warn({ err }, 'Final flush failed')),
          ),
        );
        if (options.socketPath !== undefined) await unlink(options.socketPath).catch(() => undefined);
        log.info({}, 'Server stopped');
        resolveClosed();
      })();
      return closing;
    },
  };
  log.info({ address }, 'Server listening');
  return handle;
}
