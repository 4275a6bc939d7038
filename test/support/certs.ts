/**
 * Test PKI for the mTLS API, generated with node-forge in memory (and written to a temp folder on
 * demand): a CA, a server certificate for 127.0.0.1/localhost, client certificates signed by the CA
 * (CN=kernel, CN=viewer, CN=stranger — the last one has no identity entry) and a rogue client
 * (CN=kernel too) signed by ANOTHER CA, which the server must refuse at the TLS handshake.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';

export interface KeyAndCert {
  /** PEM. */
  readonly key: string;
  /** PEM. */
  readonly cert: string;
}

export interface TestPki {
  readonly ca: KeyAndCert;
  readonly server: KeyAndCert;
  readonly clients: {
    readonly kernel: KeyAndCert;
    readonly viewer: KeyAndCert;
    readonly researchBot: KeyAndCert;
    /** Signed by the CA, but its CN has no identity entry. */
    readonly stranger: KeyAndCert;
    /** CN=kernel, signed by another CA. */
    readonly rogue: KeyAndCert;
  };
  /** The CA that signed the rogue client. */
  readonly otherCa: KeyAndCert;
}

interface Issued extends KeyAndCert {
  readonly forgeCert: forge.pki.Certificate;
  readonly forgeKey: forge.pki.rsa.PrivateKey;
}

function keyPair(): { privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; pem: string } {
  // Node's native generator (forge's pure-JS one takes seconds per key).
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const forgeKey = forge.pki.privateKeyFromPem(privateKey);
  return { privateKey: forgeKey, publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e), pem: forge.pki.privateKeyToPem(forgeKey) };
}

function newCertificate(commonName: string, publicKey: forge.pki.rsa.PublicKey): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // A positive serial: the high bit clear.
  cert.serialNumber = `0${randomBytes(15).toString('hex')}`;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 60 * 60 * 1000);
  cert.setSubject([
    { name: 'commonName', value: commonName },
    { name: 'organizationName', value: 'Agent Manager tests' },
  ]);
  return cert;
}

function createCa(commonName: string): Issued {
  const keys = keyPair();
  const cert = newCertificate(commonName, keys.publicKey);
  cert.setIssuer(cert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { key: keys.pem, cert: forge.pki.certificateToPem(cert), forgeCert: cert, forgeKey: keys.privateKey };
}

function issue(ca: Issued, commonName: string, usage: 'server' | 'client'): KeyAndCert {
  const keys = keyPair();
  const cert = newCertificate(commonName, keys.publicKey);
  cert.setIssuer(ca.forgeCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: usage === 'server', clientAuth: usage === 'client' },
    ...(usage === 'server'
      ? [
          {
            name: 'subjectAltName',
            altNames: [
              { type: 7, ip: '127.0.0.1' },
              { type: 2, value: 'localhost' },
            ],
          },
        ]
      : []),
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(ca.forgeKey, forge.md.sha256.create());
  return { key: keys.pem, cert: forge.pki.certificateToPem(cert) };
}

const strip = ({ key, cert }: KeyAndCert): KeyAndCert => ({ key, cert });

/** Generates the whole test PKI (a second or so). */
export function createTestPki(): TestPki {
  const ca = createCa('Agent Manager test CA');
  const otherCa = createCa('Some other CA');
  return {
    ca: strip(ca),
    otherCa: strip(otherCa),
    server: issue(ca, 'localhost', 'server'),
    clients: {
      kernel: issue(ca, 'kernel', 'client'),
      viewer: issue(ca, 'viewer', 'client'),
      researchBot: issue(ca, 'research-bot', 'client'),
      stranger: issue(ca, 'stranger', 'client'),
      rogue: issue(otherCa, 'kernel', 'client'),
    },
  };
}

export interface PkiFiles {
  readonly dir: string;
  readonly caFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  remove(): void;
}

/** Writes the CA certificate and the server's certificate and key to a new temp folder (key mode 600). */
export function writeServerFiles(pki: TestPki): PkiFiles {
  const dir = mkdtempSync(join(tmpdir(), 'ingest-pki-'));
  const files = { caFile: join(dir, 'ca.pem'), serverCertFile: join(dir, 'server.pem'), serverKeyFile: join(dir, 'server-key.pem') };
  writeFileSync(files.caFile, pki.ca.cert);
  writeFileSync(files.serverCertFile, pki.server.cert);
  writeFileSync(files.serverKeyFile, pki.server.key, { mode: 0o600 });
  return { dir, ...files, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface HttpsResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: unknown;
}

/**
 * One HTTPS request to 127.0.0.1:`port` trusting `ca`, presenting `client` (or no certificate), on a
 * fresh connection. Rejects when the TLS handshake or the connection fails (no HTTP status then).
 */
export function mtlsRequest(
  port: number,
  options: { method: string; path: string; ca: string; client?: KeyAndCert; body?: unknown; timeoutMs?: number },
): Promise<HttpsResponse> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        method: options.method,
        path: options.path,
        ca: options.ca,
        ...(options.client ? { key: options.client.key, cert: options.client.cert } : {}),
        agent: false,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        timeout: options.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = text === '' ? undefined : JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(payload);
  });
}
