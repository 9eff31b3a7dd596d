// `vdisk-agent attach ...`: attach, report (JSON on stdout and in the termination-message file), stay
// up serving until SIGTERM/SIGINT (or `signal` aborts), then detach and exit 0. Exit 1 when attach
// or detach fails, with the error's code in the report. bin/vdisk-agent.mjs dispatches here.

import { writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { hostPath } from '../runtime/paths.ts';
import { ATTACH_USAGE, parseAttachArgv } from './config.ts';
import { LocalRunner } from './runner.ts';
import { serveInProcess } from './serve.ts';
import { type AttachDeps, attach, detach } from './sequence.ts';

export interface MainDeps extends Partial<AttachDeps> {
  /** Aborting detaches, as SIGTERM does (tests). */
  signal?: AbortSignal;
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
}

function errorReport(err: unknown): Record<string, unknown> {
  const error = err as { code?: unknown; message?: unknown; name?: unknown };
  return {
    phase: 'Failed',
    error: {
      code: typeof error?.code === 'string' ? error.code : 'VDISK_EATTACH',
      name: error?.name,
      message: String(error?.message ?? err),
    },
  };
}

/** Kubernetes keeps at most this many bytes of a termination message. */
export const TERMINATION_MESSAGE_MAX_BYTES = 4096;

/**
 * The report as JSON within the termination-message limit: `mounts` (which repeats what
 * `partitions` says) goes first, then long strings are cut, so the controller always gets valid JSON.
 */
export function fitTerminationMessage(value: unknown): string {
  let text = JSON.stringify(value);
  if (Buffer.byteLength(text) <= TERMINATION_MESSAGE_MAX_BYTES) return text;
  const { mounts: _mounts, ...rest } = value as Record<string, unknown>;
  text = JSON.stringify(rest);
  const cut = (limit: number) =>
    JSON.stringify(rest, (_key, field: unknown) =>
      typeof field === 'string' && field.length > limit ? `${field.slice(0, limit)}...` : field,
    );
  for (const limit of [512, 128, 32]) {
    if (Buffer.byteLength(text) <= TERMINATION_MESSAGE_MAX_BYTES) break;
    text = cut(limit);
  }
  return Buffer.byteLength(text) <= TERMINATION_MESSAGE_MAX_BYTES
    ? text
    : JSON.stringify({ phase: (rest as { phase?: unknown }).phase, truncated: true });
}

/** Runs the attach agent; resolves with the process exit code once detached (or failed). */
export async function main(argv: string[], deps: MainDeps = {}): Promise<number> {
  const stdout = deps.stdout ?? ((text: string) => process.stdout.write(text));
  const stderr = deps.stderr ?? ((text: string) => process.stderr.write(text));
  if (argv.includes('--help') || argv.includes('-h')) {
    stdout(ATTACH_USAGE);
    return 0;
  }
  let terminationLog: string | undefined;
  const report = (value: unknown) => {
    const text = JSON.stringify(value);
    stdout(`${text}\n`);
    if (terminationLog) {
      try {
        writeFileSync(terminationLog, fitTerminationMessage(value));
      } catch (err) {
        stderr(`vdisk-agent: cannot write ${terminationLog}: ${(err as Error).message}\n`);
      }
    }
  };
  // Logs are pino JSON lines on stderr; stdout carries only the reports.
  const logger = deps.stderr
    ? undefined
    : pino({ base: { role: 'attach' } }, pino.destination({ fd: 2, sync: true }));
  const log =
    deps.log ??
    ((message: string, fields?: Record<string, unknown>) =>
      logger
        ? logger.info(fields ?? {}, message)
        : stderr(`${JSON.stringify({ msg: message, ...fields })}\n`));
  try {
    const config = parseAttachArgv(argv);
    config.imagePath = hostPath(config.imagePath);
    config.socketPath = hostPath(config.socketPath);
    if (config.nbdServerArgs[0] === '-unix') config.nbdServerArgs = ['-unix', config.socketPath];
    terminationLog = config.terminationMessagePath ? hostPath(config.terminationMessagePath) : undefined;
    const attachDeps: AttachDeps = {
      runner: deps.runner ?? new LocalRunner(),
      serve: deps.serve ?? serveInProcess,
      log,
      ...(logger ? { serverLog: logger.child({ component: 'nbd' }) } : {}),
      ...(deps.open ? { open: deps.open } : {}),
      ...(deps.sleep ? { sleep: deps.sleep } : {}),
    };
    // Signals are caught from the start: a SIGTERM during attach detaches right after it.
    let stop: () => void = () => undefined;
    const stopped = new Promise<void>((resolve) => {
      stop = resolve;
    });
    const onSignal = () => stop();
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    deps.signal?.addEventListener('abort', onSignal, { once: true });
    if (deps.signal?.aborted) stop();
    try {
      const attachment = await attach(config, attachDeps);
      report(attachment.report);
      await stopped;
      log('Detaching', { device: attachment.report.device });
      report(await detach(attachment, attachDeps));
      return 0;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
  } catch (err) {
    report(errorReport(err));
    stderr(`vdisk-agent: ${(err as Error)?.message ?? String(err)}\n`);
    return 1;
  }
}
