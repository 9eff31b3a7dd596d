// `vdisk serve`: qemu-nbd's job in-process. Opens one image (any format the engine reads), serves it
// over NBD on a unix socket (-k) or TCP (-b/-p, 127.0.0.1:10809 by default) until the last client
// leaves (or forever with -t), and on SIGTERM/SIGINT drains in-flight requests, flushes and closes.
// Options keep qemu-nbd's spellings (qemu-nbd(8)); TLS credentials use its --object syntax.

import { fork } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { BlockDevice } from '../../engine/block-device.ts';
import { InvalidOptionError } from '../../engine/errors.ts';
import { findDriver } from '../../engine/formats/registry.ts';
import { NodeHostFile } from '../../engine/io/host-file.ts';
import { openImage } from '../../engine/open.ts';
import { openPartition } from '../../nbd/partition-window.ts';
import { type NbdServerHandle, type NbdTlsOptions, startNbdServer } from '../../nbd/server.ts';
import type { NbdLogger } from '../../nbd/transmission.ts';
import type { CliCommand, CliIo } from '../command.ts';
import { backingPolicy } from '../common.ts';
import { imageOperand } from '../image-opts.ts';
import { CliUsageError, getopt, hasFlag, lastValue, type OptionSpec } from '../getopt.ts';

const SYNOPSIS =
  'serve [-f fmt] [-r] [-x name] [-D description] [-k socket | -b addr -p port] [-e shared] [-t] [-s] [-l snapshot] [-P partition] ' +
  '[--discard=ignore|unmap] [--detect-zeroes=off|on|unmap] [--pid-file=file] [--fork] [--tls-creds=id] filename';

const HELP = `usage: vdisk ${SYNOPSIS}
Serve a disk image over NBD (as qemu-nbd does).

  -f, --format=FORMAT        image format (probed when absent)
  -r, --read-only            export read-only
  -x, --export-name=NAME     export name (default: the empty name)
  -D, --description=TEXT     export description
  -k, --socket=PATH          listen on a unix socket
  -b, --bind=ADDR            TCP address (default 127.0.0.1)
  -p, --port=PORT            TCP port (default 10809)
  -e, --shared=NUM           allow NUM simultaneous clients (default 1); above 1 advertises multi-conn
  -t, --persistent           keep serving after the last client disconnects
  -s, --snapshot             writes go to a temporary qcow2 overlay, discarded on exit
  -l, --load-snapshot=SNAP   serve an internal snapshot (read-only): ID_OR_NAME or
                             snapshot.id=ID,snapshot.name=NAME
  -P, --partition=NUM        serve only partition NUM (MBR or GPT, numbered as Linux does)
      --discard=MODE         ignore (default) or unmap: pass TRIM on to the image
      --detect-zeroes=MODE   off (default), on or unmap: turn all-zero writes into zero writes
      --pid-file=PATH        write the server's pid once it listens
      --fork                 return once the server listens, leaving it running in the background
      --object tls-creds-x509,id=ID,dir=DIR[,verify-peer=on]   (ca-cert.pem, server-cert.pem, server-key.pem)
      --object tls-creds-psk,id=ID,dir=DIR                     (keys.psk: identity:hexkey per line)
      --object secret,id=ID,data=TEXT|file=PATH[,format=base64]  (a passphrase for an encrypted image)
      --image-opts           the operand is driver=FMT,file.filename=PATH,encrypt.key-secret=ID
      --tls-creds=ID             require TLS with those credentials
      --handshake-limit=SECONDS  drop clients that don't finish the handshake in time (default 10)
`;

const OPTIONS: readonly OptionSpec[] = [
  { short: 'h', long: 'help', takesValue: false },
  { short: 'f', long: 'format', takesValue: true },
  { short: 'r', long: 'read-only', takesValue: false },
  { short: 'x', long: 'export-name', takesValue: true },
  { short: 'D', long: 'description', takesValue: true },
  { short: 'k', long: 'socket', takesValue: true },
  { short: 'b', long: 'bind', takesValue: true },
  { short: 'p', long: 'port', takesValue: true },
  { short: 'e', long: 'shared', takesValue: true },
  { short: 't', long: 'persistent', takesValue: false },
  { short: 's', long: 'snapshot', takesValue: false },
  { short: 'l', long: 'load-snapshot', takesValue: true },
  { short: 'v', long: 'verbose', takesValue: false },
  { short: 'P', long: 'partition', takesValue: true },
  { long: 'discard', takesValue: true },
  { long: 'detect-zeroes', takesValue: true },
  { long: 'pid-file', takesValue: true },
  { long: 'fork', takesValue: false },
  { long: 'object', takesValue: true },
  { long: 'image-opts', takesValue: false },
  { long: 'tls-creds', takesValue: true },
  { long: 'handshake-limit', takesValue: true },
  { long: 'cache', takesValue: true },
  { long: 'aio', takesValue: true },
];

/** Set in the background child of --fork: it reports readiness over IPC instead of forking again. */
const FORK_CHILD_ENV = 'VDISK_SERVE_FORKED';

function integerOption(
  name: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new InvalidOptionError({
      option: name,
      value: text,
      message: `Invalid ${name} '${text}' (expected ${min}..${max})`,
    });
  }
  return value;
}

function enumOption<T extends string>(
  name: string,
  text: string | undefined,
  values: readonly T[],
  fallback: T,
): T {
  if (text === undefined) return fallback;
  if (!(values as readonly string[]).includes(text)) {
    throw new InvalidOptionError({
      option: name,
      value: text,
      message: `Invalid ${name} '${text}' (expected ${values.join(', ')})`,
    });
  }
  return text as T;
}

/** `--object type,id=ID,key=value,...` -> { type, props }. */
function parseObject(text: string): { type: string; props: Map<string, string> } {
  const [type = '', ...rest] = text.split(',');
  const props = new Map<string, string>();
  for (const item of rest) {
    const equals = item.indexOf('=');
    if (equals < 0)
      throw new InvalidOptionError({ option: 'object', value: text, message: `Invalid --object '${text}'` });
    props.set(item.slice(0, equals), item.slice(equals + 1));
  }
  return { type, props };
}

/** Loads the credentials `--tls-creds ID` names from the matching `--object`. */
async function loadTls(objects: readonly string[], credsId: string): Promise<NbdTlsOptions> {
  const object = objects.map(parseObject).find((candidate) => candidate.props.get('id') === credsId);
  if (!object)
    throw new InvalidOptionError({
      option: 'tls-creds',
      value: credsId,
      message: `No TLS credentials with id '${credsId}'`,
    });
  const dir = object.props.get('dir');
  if (!dir)
    throw new InvalidOptionError({
      option: 'object',
      value: credsId,
      message: `TLS credentials '${credsId}' need dir=`,
    });
  if (object.props.get('endpoint') === 'client') {
    throw new InvalidOptionError({
      option: 'object',
      value: credsId,
      message: `TLS credentials '${credsId}' are for a client endpoint`,
    });
  }
  if (object.type === 'tls-creds-x509') {
    const verifyPeer = object.props.get('verify-peer') === 'on' || object.props.get('verify-peer') === 'yes';
    return {
      key: await readFile(join(dir, 'server-key.pem')),
      cert: await readFile(join(dir, 'server-cert.pem')),
      ca: verifyPeer ? await readFile(join(dir, 'ca-cert.pem')) : undefined,
      requireClientCert: verifyPeer,
    };
  }
  if (object.type === 'tls-creds-psk') {
    const pskKeys = new Map<string, Buffer>();
    for (const line of (await readFile(join(dir, 'keys.psk'), 'utf8')).split('\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) pskKeys.set(line.slice(0, colon), Buffer.from(line.slice(colon + 1).trim(), 'hex'));
    }
    return { pskKeys };
  }
  throw new InvalidOptionError({
    option: 'object',
    value: object.type,
    message: `Unsupported TLS credentials type '${object.type}'`,
  });
}

/** -s: a temporary qcow2 overlay over the image; writes land there and vanish with it. */
async function openSnapshotOverlay(
  path: string,
  format: string | undefined,
  driverOptions: Record<string, string> | undefined,
): Promise<{ device: BlockDevice; cleanup: () => Promise<void> }> {
  const folder = await mkdtemp(join(tmpdir(), 'vdisk-serve-'));
  try {
    const overlayPath = join(folder, 'overlay.qcow2');
    // Metadata is enough here (format and size): an encrypted image opens without its key.
    const base = await openImage(path, {
      format,
      readOnly: true,
      metadataOnly: true,
      allowBackingEscape: backingPolicy.allowEscape,
    });
    const baseFormat = base.formatName;
    const sizeBytes = base.sizeBytes;
    await base.close();
    const qcow2 = findDriver('qcow2');
    if (!qcow2.create)
      throw new InvalidOptionError({
        option: 'snapshot',
        message: 'qcow2 overlays cannot be created in this build',
      });
    const file = await NodeHostFile.open(overlayPath, { readOnly: false, create: true });
    try {
      await qcow2.create({
        path: overlayPath,
        file,
        sizeBytes,
        options: {},
        backingFile: resolve(path),
        backingFormat: baseFormat,
        openBacking: undefined,
      });
    } finally {
      await file.close();
    }
    // The image's key options reach it through the overlay, which passes them down its chain.
    const device = await openImage(overlayPath, { format: 'qcow2', allowBackingEscape: true, driverOptions });
    return { device, cleanup: () => rm(folder, { recursive: true, force: true }) };
  } catch (err) {
    await rm(folder, { recursive: true, force: true });
    throw err;
  }
}

/**
 * -l as qemu-nbd takes it: `snapshot.id=ID,snapshot.name=NAME` (either key or both, which must then
 * name the same snapshot) or a bare `ID_OR_NAME` (an ID match wins). Returns the read-only view;
 * throws InvalidOptionError (VDISK_EINVAL) when the image has no snapshots or none matches.
 */
async function openSnapshot(image: BlockDevice, spec: string, path: string): Promise<BlockDevice> {
  const refuse = (message: string): InvalidOptionError =>
    new InvalidOptionError({ option: 'load-snapshot', value: spec, message: `${path}: ${message}` });
  const snapshots = image.snapshots;
  if (!snapshots) throw refuse(`${image.formatName} images have no internal snapshots`);
  if (!spec.startsWith('snapshot.')) return snapshots.open(spec);
  const wanted = new Map<string, string>();
  for (const item of spec.split(',')) {
    const equals = item.indexOf('=');
    const key = equals < 0 ? item : item.slice(0, equals);
    if ((key !== 'snapshot.id' && key !== 'snapshot.name') || wanted.has(key))
      throw refuse(`invalid snapshot '${spec}' (expected snapshot.id=ID,snapshot.name=NAME or ID_OR_NAME)`);
    wanted.set(key, item.slice(equals + 1));
  }
  const id = wanted.get('snapshot.id');
  const name = wanted.get('snapshot.name');
  const match = (await snapshots.list()).find(
    (snapshot) => (id === undefined || snapshot.id === id) && (name === undefined || snapshot.name === name),
  );
  if (!match) throw refuse(`Could not find snapshot '${spec}'`);
  return snapshots.open(match.id);
}

/** --fork: re-run this command in a detached child and return once it says it is listening. */
function forkIntoBackground(argv: readonly string[], io: CliIo): Promise<number> {
  const script = process.argv[1];
  if (!script) throw new CliUsageError('--fork: cannot find the vdisk entry point');
  const child = fork(script, ['serve', ...argv.filter((arg) => arg !== '--fork')], {
    detached: true,
    // No inherited stdio: the caller's pipes must close when this command returns, as a daemon's do.
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env: {
      ...process.env,
      [FORK_CHILD_ENV]: '1',
      // The global flag was consumed by runCli; the daemon inherits the decision through the environment.
      ...(backingPolicy.allowEscape ? { VDISK_ALLOW_BACKING_ESCAPE: '1' } : {}),
    },
  });
  return new Promise((resolveExit) => {
    let failure = '';
    child.on('message', (message: unknown) => {
      if (typeof message === 'object' && message !== null && 'error' in message) {
        failure = String((message as { error: unknown }).error);
        return;
      }
      child.disconnect();
      child.unref();
      resolveExit(0);
    });
    child.once('exit', (code) => {
      io.stderr(`vdisk: ${failure || 'the background server exited before it was ready'}\n`);
      resolveExit(code || 1);
    });
  });
}

async function runServe(argv: string[], io: CliIo): Promise<number> {
  // Image I/O runs on libuv's thread pool; its default of 4 threads caps the requests served at once.
  // Read when the pool first starts, which has not happened yet in this process.
  process.env.UV_THREADPOOL_SIZE ??= '16';
  const parsed = getopt(argv, OPTIONS);
  if (hasFlag(parsed, 'help')) {
    io.stdout(HELP);
    return 0;
  }
  const [operand, ...extra] = parsed.operands;
  if (!operand || extra.length > 0)
    throw new CliUsageError('Expecting exactly one image file name (try --help)');
  // qemu-nbd --image-opts: driver=FMT,file.filename=PATH,encrypt.key-secret=ID (secrets from --object).
  const { path, format, driverOptions } = imageOperand(parsed, operand);
  const socketPath = lastValue(parsed, 'socket');
  if (socketPath !== undefined && (hasFlag(parsed, 'port') || hasFlag(parsed, 'bind'))) {
    throw new CliUsageError('-k cannot be combined with -b or -p');
  }
  const shared = integerOption('shared', lastValue(parsed, 'shared'), 1, 1, 10_000);
  const port = integerOption('port', lastValue(parsed, 'port'), 10809, 0, 65535);
  const handshakeLimitSeconds = integerOption(
    'handshake-limit',
    lastValue(parsed, 'handshake-limit'),
    10,
    1,
    3600,
  );
  const discard = enumOption(
    'discard',
    lastValue(parsed, 'discard'),
    ['ignore', 'off', 'unmap', 'on'],
    'ignore',
  );
  const detectZeroes = enumOption(
    'detect-zeroes',
    lastValue(parsed, 'detect-zeroes'),
    ['off', 'on', 'unmap'],
    'off',
  );
  const credsId = lastValue(parsed, 'tls-creds');
  const tls = credsId === undefined ? undefined : await loadTls(parsed.options.get('object') ?? [], credsId);
  if (hasFlag(parsed, 'fork') && !process.env[FORK_CHILD_ENV]) return forkIntoBackground(argv, io);

  const readOnly = hasFlag(parsed, 'read-only');
  const snapshotName = lastValue(parsed, 'load-snapshot');
  let device: BlockDevice;
  let cleanup: () => Promise<void> = async () => undefined;
  let snapshotOf: BlockDevice | undefined;
  if (hasFlag(parsed, 'snapshot')) {
    ({ device, cleanup } = await openSnapshotOverlay(path, format, driverOptions));
  } else if (snapshotName !== undefined) {
    snapshotOf = await openImage(path, {
      format,
      readOnly: true,
      allowBackingEscape: backingPolicy.allowEscape,
      driverOptions,
    });
    const opened = snapshotOf;
    device = await openSnapshot(opened, snapshotName, path).catch(async (err: unknown) => {
      await opened.close();
      throw err;
    });
  } else {
    device = await openImage(path, {
      format,
      readOnly,
      allowBackingEscape: backingPolicy.allowEscape,
      driverOptions,
    });
  }

  const partition = lastValue(parsed, 'partition');
  if (partition !== undefined) {
    const number = integerOption('partition', partition, 1, 1, 128);
    const whole = device;
    device = await openPartition(whole, number, path).catch(async (err: unknown) => {
      await whole.close();
      await snapshotOf?.close();
      await cleanup();
      throw err;
    });
  }

  // -v: control-path lines as JSON on stderr (per-request lines stay at debug); pino loads only then.
  let log: NbdLogger | undefined;
  if (hasFlag(parsed, 'verbose')) {
    const { pino } = await import('pino');
    log = pino({ base: { component: 'nbd' } }, pino.destination({ fd: 2, sync: true }));
  }
  let server: NbdServerHandle;
  try {
    server = await startNbdServer({
      exports: [
        {
          name: lastValue(parsed, 'export-name') ?? '',
          description: lastValue(parsed, 'description'),
          device,
          readOnly: readOnly || snapshotName !== undefined,
          discard: discard === 'unmap' || discard === 'on',
          detectZeroes,
          multiConn: shared > 1,
        },
      ],
      ...(socketPath !== undefined
        ? { socketPath }
        : { port, host: lastValue(parsed, 'bind') ?? '127.0.0.1' }),
      maxConnections: shared,
      persistent: hasFlag(parsed, 'persistent'),
      handshakeTimeoutMs: handshakeLimitSeconds * 1000,
      tls,
      // -v: control-path lines as JSON on stderr (per-request lines stay at debug).
      ...(log ? { log } : {}),
    });
  } catch (err) {
    await device.close();
    await snapshotOf?.close();
    await cleanup();
    const errno = (err as { code?: unknown })?.code;
    if (typeof errno === 'string' && !errno.startsWith('VDISK_')) {
      // EADDRINUSE, EACCES, ENOENT (socket folder): the user's -k/-b/-p, not a vdisk bug.
      const where = socketPath ?? `${lastValue(parsed, 'bind') ?? '127.0.0.1'}:${port}`;
      throw new InvalidOptionError({
        option: socketPath ? 'socket' : 'port',
        value: where,
        message: `Failed to listen on ${where}: ${errno}`,
        cause: err,
      });
    }
    throw err;
  }
  const pidFile = lastValue(parsed, 'pid-file');
  if (pidFile !== undefined) await writeFile(pidFile, `${process.pid}\n`);
  if (hasFlag(parsed, 'verbose')) io.stderr(`vdisk: serving ${path} at ${server.uri}\n`);
  const stop = (): void => void server.close();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', stop);
  if (process.send) process.send('ready');
  try {
    await server.closed;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    process.off('SIGHUP', stop);
    await device.close();
    await snapshotOf?.close();
    await cleanup();
    if (pidFile !== undefined) await rm(pidFile, { force: true });
  }
  return 0;
}

export const serveCommand: CliCommand = {
  name: 'serve',
  synopsis: SYNOPSIS,
  summary: 'Serve an image over NBD (qemu-nbd)',
  async run(argv, io) {
    try {
      return await runServe(argv, io);
    } catch (err) {
      // The --fork child has no stderr: its parent prints the reason instead.
      if (process.env[FORK_CHILD_ENV] && process.send)
        process.send({ error: err instanceof Error ? err.message : String(err) });
      throw err;
    }
  },
};
