// Informers survive watch failures: a watch answered with HTTP 500 is restarted (with backoff) from
// the last resourceVersion, and a 410 Gone makes the informer list again. A 127.0.0.1 HTTP server
// plays the apiserver's watch endpoint; client-node's real ListWatch and Watch run against it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import { startInformer } from '../../../src/controller/informers.ts';
import { makeClients } from '../../../src/controller/kube.ts';
import { createLogger } from '../../../src/controller/logger.ts';

type Reply = (response: import('node:http').ServerResponse, resourceVersion: string) => void;

function object(name: string, resourceVersion: string): KubernetesObject {
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: 'ns', resourceVersion } };
}

async function fakeWatchServer(
  replies: Reply[],
): Promise<{ server: Server; url: string; watchVersions: string[]; queries: URLSearchParams[] }> {
  const watchVersions: string[] = [];
  const queries: URLSearchParams[] = [];
  const server = createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://x');
    watchVersions.push(url.searchParams.get('resourceVersion') ?? '');
    queries.push(url.searchParams);
    const reply = replies.shift();
    if (!reply) {
      response.writeHead(200, { 'content-type': 'application/json' });
      return; // hold the watch open with nothing to say
    }
    reply(response, url.searchParams.get('resourceVersion') ?? '');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    watchVersions,
    queries,
  };
}

function kubeConfigFor(url: string): KubeConfig {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'fake', server: url, skipTLSVerify: true }],
    users: [{ name: 'fake', token: 'x' }],
    contexts: [{ name: 'fake', cluster: 'fake', user: 'fake' }],
    currentContext: 'fake',
  });
  return kubeConfig;
}

const log = createLogger('informer-test');
log.level = 'silent';
const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function waitUntil(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('startInformer', () => {
  it('restarts a watch that failed with HTTP 500, from the last resourceVersion, without relisting', async () => {
    const fake = await fakeWatchServer([
      (response) => response.writeHead(500).end('boom'),
      (response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.write(`${JSON.stringify({ type: 'ADDED', object: object('b', '6') })}\n`);
      },
    ]);
    let lists = 0;
    const list = async (): Promise<KubernetesListObject<KubernetesObject>> => {
      lists += 1;
      return {
        apiVersion: 'v1',
        kind: 'List',
        metadata: { resourceVersion: '5' },
        items: [object('a', '5')],
      };
    };
    const seen: string[] = [];
    const handle = await startInformer(
      makeClients(kubeConfigFor(fake.url)),
      '/api/v1/configmaps',
      list,
      undefined,
      log,
      (o) => seen.push(o.metadata?.name ?? ''),
    );
    cleanups.push(async () => {
      await handle.stop();
      fake.server.closeAllConnections();
      fake.server.close();
    });
    await waitUntil(() => seen.includes('b'), 'the event after the restart');
    expect(seen).toEqual(['a', 'b']);
    expect(lists).toBe(1);
    expect(fake.watchVersions.slice(0, 2)).toEqual(['5', '5']);
    // Bookmarks and a server-side timeout of 5-10 minutes keep an idle watch open (no 30 s reconnects).
    for (const query of fake.queries) {
      expect(query.get('allowWatchBookmarks')).toBe('true');
      expect(Number(query.get('timeoutSeconds'))).toBeGreaterThanOrEqual(300);
      expect(Number(query.get('timeoutSeconds'))).toBeLessThan(600);
    }
    expect(
      handle.cache
        .list('ns')
        .map((o) => o.metadata?.name)
        .sort(),
    ).toEqual(['a', 'b']);
  });

  it('lists again after 410 Gone (the resourceVersion is too old)', async () => {
    const fake = await fakeWatchServer([
      (response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(
          `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired' } })}\n`,
        );
      },
    ]);
    let lists = 0;
    const list = async (): Promise<KubernetesListObject<KubernetesObject>> => {
      lists += 1;
      const items = lists === 1 ? [object('a', '5')] : [object('c', '9')];
      return {
        apiVersion: 'v1',
        kind: 'List',
        metadata: { resourceVersion: lists === 1 ? '5' : '9' },
        items,
      };
    };
    const handle = await startInformer(
      makeClients(kubeConfigFor(fake.url)),
      '/api/v1/configmaps',
      list,
      undefined,
      log,
      () => undefined,
    );
    cleanups.push(async () => {
      await handle.stop();
      fake.server.closeAllConnections();
      fake.server.close();
    });
    await waitUntil(() => lists === 2 && fake.watchVersions.length >= 2, 'the relist');
    await waitUntil(
      () => handle.cache.list('ns').length === 1 && handle.cache.get('c', 'ns') !== undefined,
      'the cache to hold the relisted object',
    );
    expect(handle.cache.get('a', 'ns')).toBeUndefined();
    expect(fake.watchVersions[1]).toBe('9');
  });
});
