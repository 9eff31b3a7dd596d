// Small helpers over @kubernetes/client-node v2 used by the local node: HTTP status of an ApiException,
// JSON-patch options, MicroTime strings, and a bounded retry on conflicts.
import { type ConfigurationOptions, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';

/** HTTP status of an error thrown by the client (0 when it is not an API error). */
export function httpStatus(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : 0;
}

/** Request options selecting a JSON Patch (RFC 6902) body. */
export const JSON_PATCH: ConfigurationOptions = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);
/** Request options selecting a JSON Merge Patch (RFC 7386) body. */
export const MERGE_PATCH: ConfigurationOptions = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/**
 * A metav1.MicroTime value (RFC 3339 with exactly 6 fractional digits), typed as the Date the
 * generated models declare: the serializer passes unknown types (V1MicroTime) through unchanged.
 */
export function microTimeNow(): Date {
  return new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000Z') as unknown as Date;
}

/** An RFC 3339 timestamp with second precision (metav1.Time), typed as Date for the models. */
export function timeNow(): Date {
  return new Date(Math.floor(Date.now() / 1000) * 1000);
}

/** Runs `action` again after a 409 Conflict, at most `attempts` times. */
export async function retryOnConflict<T>(action: () => Promise<T>, attempts = 5): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await action();
    } catch (err) {
      if (httpStatus(err) !== 409 || attempt >= attempts) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
    }
  }
}

/** Minimal logger interface (console-compatible), so the local node can be silenced in tests. */
export interface LocalNodeLog {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** Logs JSON lines to stderr, or nothing when `quiet`. */
export function stderrLog(quiet: boolean): LocalNodeLog {
  const write = (level: string, message: string, fields?: Record<string, unknown>) => {
    if (!quiet)
      process.stderr.write(
        `${JSON.stringify({ level, time: new Date().toISOString(), msg: message, ...fields })}\n`,
      );
  };
  return { info: (m, f) => write('info', m, f), warn: (m, f) => write('warn', m, f) };
}

/**
 * Restarts an informer 1 s after a watch error (client-node's ListWatch stops on errors other than
 * 410 Gone and client timeouts), until `isStopped()` says the owner is shutting down.
 */
export function restartOnError(
  informer: { on(verb: 'error', cb: (err?: unknown) => void): void; start(): Promise<void> },
  isStopped: () => boolean,
  log: LocalNodeLog,
  what: string,
): void {
  informer.on('error', (err) => {
    if (isStopped()) return;
    log.warn('Watch failed, restarting', { watch: what, err: String(err) });
    setTimeout(() => {
      if (!isStopped()) informer.start().catch(() => undefined);
    }, 1_000).unref();
  });
}
