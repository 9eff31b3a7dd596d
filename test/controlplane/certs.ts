// Certificates for a throw-away control plane, minted with the openssl CLI: a CA, the apiserver's
// serving certificate (SAN 127.0.0.1 + localhost), an admin client certificate (O=system:masters,
// the envtest default user) and the service-account signing key. EC P-256 keys: fast to generate.
import { execFile } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** PEM files of one control plane, all inside `dir`. */
export interface ControlPlaneCerts {
  caCertPath: string;
  caKeyPath: string;
  apiserverCertPath: string;
  apiserverKeyPath: string;
  adminCertPath: string;
  adminKeyPath: string;
  serviceAccountKeyPath: string;
  serviceAccountPublicKeyPath: string;
}

const VALID_DAYS = '30';
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('openssl', args, { cwd, timeout: 30_000 });
}

async function signedCert(
  dir: string,
  name: string,
  subject: string,
  extensions: string,
): Promise<{ certPath: string; keyPath: string }> {
  const keyPath = join(dir, `${name}.key`);
  const csrPath = join(dir, `${name}.csr`);
  const certPath = join(dir, `${name}.crt`);
  const extPath = join(dir, `${name}.ext`);
  await writeFile(extPath, extensions);
  await openssl(['req', ...EC_KEY, '-subj', subject, '-keyout', keyPath, '-out', csrPath], dir);
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      csrPath,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      VALID_DAYS,
      '-out',
      certPath,
      '-extfile',
      extPath,
    ],
    dir,
  );
  return { certPath, keyPath };
}

/** The certificate paths inside `dir`. */
export function certPaths(dir: string): ControlPlaneCerts {
  return {
    caCertPath: join(dir, 'ca.crt'),
    caKeyPath: join(dir, 'ca.key'),
    apiserverCertPath: join(dir, 'apiserver.crt'),
    apiserverKeyPath: join(dir, 'apiserver.key'),
    adminCertPath: join(dir, 'admin.crt'),
    adminKeyPath: join(dir, 'admin.key'),
    serviceAccountKeyPath: join(dir, 'sa.key'),
    serviceAccountPublicKeyPath: join(dir, 'sa.pub'),
  };
}

/** Reuses the certificates in `dir` when all exist (a restarted dev cluster), else mints them. */
export async function reuseOrGenerateCerts(dir: string): Promise<ControlPlaneCerts> {
  const paths = certPaths(dir);
  const present = await Promise.all(
    Object.values(paths).map((path) =>
      access(path).then(
        () => true,
        () => false,
      ),
    ),
  );
  return present.every(Boolean) ? paths : generateCerts(dir);
}

/** Mints every certificate into `dir` (must exist). Throws when openssl fails. */
export async function generateCerts(dir: string): Promise<ControlPlaneCerts> {
  await openssl(
    [
      'req',
      '-x509',
      ...EC_KEY,
      '-days',
      VALID_DAYS,
      '-subj',
      '/CN=vdisk-test-ca',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
    ],
    dir,
  );
  await Promise.all([
    signedCert(
      dir,
      'apiserver',
      '/CN=kube-apiserver',
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n',
    ),
    signedCert(dir, 'admin', '/CN=admin/O=system:masters', 'extendedKeyUsage=clientAuth\n'),
  ]);
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'sa.key'], dir);
  await openssl(['ec', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  return certPaths(dir);
}

/** Reads a PEM file as the base64 string kubeconfig `*-data` fields hold. */
export async function pemAsBase64(path: string): Promise<string> {
  return (await readFile(path)).toString('base64');
}

/** A self-signed serving certificate for 127.0.0.1 (the local node's kubelet endpoint); returns PEM buffers. */
export async function selfSignedServingCert(
  dir: string,
  commonName: string,
): Promise<{ cert: Buffer; key: Buffer }> {
  const keyPath = join(dir, `${commonName}.key`);
  const certPath = join(dir, `${commonName}.crt`);
  await openssl(
    [
      'req',
      '-x509',
      ...EC_KEY,
      '-days',
      VALID_DAYS,
      '-subj',
      `/CN=${commonName}`,
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    dir,
  );
  return { cert: await readFile(certPath), key: await readFile(keyPath) };
}
