// The controller's probe and metrics endpoint: /healthz (the process runs), /readyz (informers synced
// and, with leader election, either leading or standing by), /metrics (Prometheus text format).

import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';

export interface ProbeState {
  isHealthy(): boolean;
  isReady(): boolean;
}

/** Starts the server on `port` (0 = any) at `host`; resolves with the server and its bound port. */
export async function startHttpServer(
  registry: Registry,
  probes: ProbeState,
  port: number,
  host = '0.0.0.0',
): Promise<{ server: Server; port: number }> {
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (path === '/healthz' || path === '/readyz') {
      const ok = path === '/healthz' ? probes.isHealthy() : probes.isReady();
      response.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
      response.end(ok ? 'ok\n' : 'not ready\n');
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => {
          response.writeHead(200, { 'content-type': registry.contentType });
          response.end(text);
        },
        (err: unknown) => {
          response.writeHead(500, { 'content-type': 'text/plain' });
          response.end(String(err));
        },
      );
      return;
    }
    response.writeHead(404, { 'content-type': 'text/plain' });
    response.end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  return { server, port: typeof address === 'object' && address ? address.port : port };
}
