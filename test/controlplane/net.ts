// Loopback ports and readiness polling for the control plane's components.
import { request } from 'node:https';
import { createServer } from 'node:net';

/** Asks the kernel for a free TCP port on 127.0.0.1 (closed again before returning). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port);
        else reject(new Error('no port assigned'));
      });
    });
  });
}

/** One GET over https; resolves with the status code and body, or with status 0 on a connection error. */
export function httpsGet(
  url: string,
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; insecure?: boolean },
  timeoutMs = 5_000,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request(
      url,
      {
        ca: tls.ca,
        cert: tls.cert,
        key: tls.key,
        rejectUnauthorized: tls.insecure !== true,
        timeout: timeoutMs,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (body.length < 65_536) body += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, body: String(err) }));
    req.end();
  });
}

/**
 * Polls until `check` returns true; throws with `what` and the last detail after `timeoutMs`.
 * `failFast` is checked too, so a crashed component fails at once instead of timing out.
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean | string>,
  options: { timeoutMs: number; intervalMs?: number; failFast?: () => string | undefined },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const failure = options.failFast?.();
    if (failure !== undefined) throw new Error(`${what}: ${failure}`);
    const result = await check();
    if (result === true) return;
    if (typeof result === 'string') last = result;
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 100));
  }
  throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ''}`);
}
