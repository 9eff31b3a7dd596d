// `vdisk serve --tls-creds`: STARTTLS with x509 certificates (made here with openssl) and with PSK,
// checked with libnbd (nbdinfo, nbdcopy) and qemu-img's own TLS client; plain-text clients and
// wrong keys are refused. Issue 5.

import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../unit/nbd/tools.ts';
import { NBD_OPT_STARTTLS, NBD_REP_ACK } from '../../src/nbd/wire.ts';
import { option, RawClient, readOptionReply } from '../unit/nbd/raw-client.ts';
import {
  missingTools,
  runOk,
  type ServerProcess,
  stopServersAndRemove,
  startVdiskServe,
} from './serve-helpers.ts';

const tools = ['openssl', 'qemu-img', 'qemu-io', 'nbdinfo', 'nbdcopy'];
const missing = missingTools(tools, 'serve-tls interop', 'openssl qemu-utils libnbd-bin');

describe.skipIf(missing.length > 0)('vdisk serve over TLS', () => {
  let folder: string;
  let image: string;
  const servers: ServerProcess[] = [];

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), 'vdisk-serve-tls-'));
    image = join(folder, 'disk.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', image, '4M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5e 512k 1M', image]);
    // A CA, and a server certificate for localhost signed by it (qemu's x509 dir layout).
    const server = join(folder, 'server');
    const client = join(folder, 'client');
    await mkdir(server);
    await mkdir(client);
    const ca = ['-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=vdisk test CA'];
    await runOk('openssl', [
      'req',
      ...ca,
      '-keyout',
      join(folder, 'ca-key.pem'),
      '-out',
      join(server, 'ca-cert.pem'),
    ]);
    await runOk('openssl', [
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-keyout',
      join(server, 'server-key.pem'),
      '-out',
      join(folder, 'server.csr'),
    ]);
    await writeFile(join(folder, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
    await runOk('openssl', [
      'x509',
      '-req',
      '-in',
      join(folder, 'server.csr'),
      '-CA',
      join(server, 'ca-cert.pem'),
      '-CAkey',
      join(folder, 'ca-key.pem'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      join(folder, 'ext.cnf'),
      '-out',
      join(server, 'server-cert.pem'),
    ]);
    await writeFile(join(client, 'ca-cert.pem'), await readFile(join(server, 'ca-cert.pem')));
    // A client certificate from the same CA, for verify-peer=on.
    await runOk('openssl', [
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=client',
      '-keyout',
      join(client, 'client-key.pem'),
      '-out',
      join(folder, 'client.csr'),
    ]);
    await runOk('openssl', [
      'x509',
      '-req',
      '-in',
      join(folder, 'client.csr'),
      '-CA',
      join(server, 'ca-cert.pem'),
      '-CAkey',
      join(folder, 'ca-key.pem'),
      '-CAcreateserial',
      '-days',
      '2',
      '-out',
      join(client, 'client-cert.pem'),
    ]);
    await mkdir(join(folder, 'anonymous'));
    await writeFile(join(folder, 'anonymous', 'ca-cert.pem'), await readFile(join(server, 'ca-cert.pem')));
    await mkdir(join(folder, 'psk'));
    await writeFile(join(folder, 'psk', 'keys.psk'), `alice:${'7a'.repeat(32)}\n`);
    await writeFile(join(folder, 'wrong.psk'), `alice:${'11'.repeat(32)}\n`);
  });

  afterAll(async () => {
    await stopServersAndRemove(servers, folder);
  });

  it('serves x509 TLS to libnbd and qemu, and refuses plain-text clients', async () => {
    const vdisk = await startVdiskServe([
      '-t',
      '-p',
      '0',
      '-f',
      'raw',
      '--object',
      `tls-creds-x509,id=tls0,dir=${join(folder, 'server')},endpoint=server`,
      '--tls-creds',
      'tls0',
      image,
    ]);
    servers.push(vdisk);
    const port = /:(\d+)\//.exec(vdisk.uri)![1]!;
    const secure = `nbds://localhost:${port}/?tls-certificates=${join(folder, 'client')}`;
    expect(await runOk('nbdinfo', [secure])).toMatch(/with TLS/);
    const copy = join(folder, 'copy.raw');
    await runOk('nbdcopy', [secure, copy]);
    expect((await readFile(copy)).equals(await readFile(image))).toBe(true);
    const plain = await run('nbdinfo', [`nbd://localhost:${port}/`]);
    expect(plain.code).not.toBe(0);
    const qemu = await runOk('qemu-img', [
      'compare',
      '--object',
      `tls-creds-x509,id=tls0,dir=${join(folder, 'client')},endpoint=client`,
      '--image-opts',
      `driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=localhost,file.server.port=${port},file.tls-creds=tls0`,
      `driver=raw,file.driver=file,file.filename=${image}`,
    ]);
    expect(qemu).toContain('identical');
    await vdisk.stop();
  });

  it('serves PSK TLS to the holder of the key only', async () => {
    const socket = join(folder, 'psk.sock');
    const vdisk = await startVdiskServe([
      '-t',
      '-k',
      socket,
      '-f',
      'raw',
      '--object',
      `tls-creds-psk,id=tls0,dir=${join(folder, 'psk')},endpoint=server`,
      '--tls-creds',
      'tls0',
      image,
    ]);
    servers.push(vdisk);
    const good = await run('nbdinfo', [
      '--size',
      `nbds+unix://alice@/?socket=${socket}&tls-psk-file=${join(folder, 'psk', 'keys.psk')}`,
    ]);
    expect(good.stdout).toBe(`${4 * 1024 * 1024}\n`);
    const wrong = await run('nbdinfo', [
      '--size',
      `nbds+unix://alice@/?socket=${socket}&tls-psk-file=${join(folder, 'wrong.psk')}`,
    ]);
    expect(wrong.code).not.toBe(0);
    expect((await run('nbdinfo', ['--size', `nbd+unix:///?socket=${socket}`])).code).not.toBe(0);
    await vdisk.stop();
  });
  it('with verify-peer=on accepts only clients holding a certificate from the CA', async () => {
    const vdisk = await startVdiskServe([
      '-t',
      '-p',
      '0',
      '-f',
      'raw',
      '--object',
      `tls-creds-x509,id=tls0,dir=${join(folder, 'server')},endpoint=server,verify-peer=on`,
      '--tls-creds',
      'tls0',
      image,
    ]);
    servers.push(vdisk);
    const port = /:(\d+)\//.exec(vdisk.uri)![1]!;
    const withCert = await run('nbdinfo', [
      '--size',
      `nbds://localhost:${port}/?tls-certificates=${join(folder, 'client')}`,
    ]);
    expect(withCert.stdout).toBe(`${4 * 1024 * 1024}\n`);
    const anonymous = await run('nbdinfo', [
      '--size',
      `nbds://localhost:${port}/?tls-certificates=${join(folder, 'anonymous')}`,
    ]);
    expect(anonymous.code).not.toBe(0);
    await vdisk.stop();
  });

  it('frees the slot of a client that stalls inside the TLS handshake', async () => {
    const socket = join(folder, 'stall.sock');
    const vdisk = await startVdiskServe([
      '-t',
      '-e',
      '1',
      '--handshake-limit',
      '1',
      '-k',
      socket,
      '-f',
      'raw',
      '--object',
      `tls-creds-x509,id=tls0,dir=${join(folder, 'server')},endpoint=server`,
      '--tls-creds',
      'tls0',
      image,
    ]);
    servers.push(vdisk);
    const stalled = await RawClient.connect(socket);
    await stalled.read(18);
    stalled.send(Buffer.from([0, 0, 0, 3]));
    stalled.send(option(NBD_OPT_STARTTLS));
    expect((await readOptionReply(stalled)).type).toBe(NBD_REP_ACK);
    expect(await stalled.waitClosed(5000)).toBe(true);
    const good = await run('nbdinfo', [
      '--size',
      `nbds+unix:///?socket=${socket}&tls-certificates=${join(folder, 'client')}&tls-verify-peer=false`,
    ]);
    expect(good.stdout).toBe(`${4 * 1024 * 1024}\n`);
    await vdisk.stop();
  });
});
