/**
 * The local stack's PKI: a CA made on the first `stack up`, and a certificate per Kafka principal,
 * under `.stack/pki/` (git-ignored). Kafka authenticates clients by certificate (mTLS) and maps the
 * subject `CN=<name>` to the principal `User:<name>`, so one certificate = one principal.
 *
 * Keys are made by Node (forge's pure-JS generator takes seconds per key) and written as unencrypted
 * PKCS#8 PEM, mode 600: what Kafka's PEM key store and Node's TLS both read. Certificates are signed
 * with node-forge (a devDependency: this is dev tooling only).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import forge from 'node-forge';
import { retryableError } from '../../lib/errors.ts';
import { STACK_PRINCIPALS, stackPkiFiles, type StackPkiFiles } from './endpoints.ts';

export { STACK_PRINCIPALS, SUPER_PRINCIPALS, stackPkiFiles, type StackPkiFiles, type StackPrincipal } from './endpoints.ts';

export interface KeyAndCert {
  /** PEM, PKCS#8. */
  readonly key: string;
  /** PEM. */
  readonly cert: string;
}

export interface CertificateAuthority extends KeyAndCert {
  readonly forgeCert: forge.pki.Certificate;
  readonly forgeKey: forge.pki.rsa.PrivateKey;
}

export interface IssueOptions {
  /** Subject alternative names for a server certificate (IP addresses and DNS names). */
  readonly serverNames?: readonly string[];
  /** Default true. */
  readonly clientAuth?: boolean;
  readonly validDays?: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

function keyPair(): { forgeKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; pem: string } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const forgeKey = forge.pki.privateKeyFromPem(privateKey);
  return { forgeKey, publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e), pem: privateKey };
}

function newCertificate(commonName: string, publicKey: forge.pki.rsa.PublicKey, validDays: number): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // A positive serial: the high bit clear.
  cert.serialNumber = `0${randomBytes(15).toString('hex')}`;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + validDays * DAY_MS);
  // CN only: the broker's mapping rule turns `CN=<name>` into `User:<name>`.
  cert.setSubject([{ name: 'commonName', value: commonName }]);
  return cert;
}

/** A self-signed CA (in memory). */
export function createCertificateAuthority(commonName: string, validDays = 3650): CertificateAuthority {
  const keys = keyPair();
  const cert = newCertificate(commonName, keys.publicKey, validDays);
  cert.setIssuer(cert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.forgeKey, forge.md.sha256.create());
  return { key: keys.pem, cert: forge.pki.certificateToPem(cert), forgeCert: cert, forgeKey: keys.forgeKey };
}

/** Reads a CA written by `ensureStackPki`. */
export function loadCertificateAuthority(key: string, cert: string): CertificateAuthority {
  return { key, cert, forgeCert: forge.pki.certificateFromPem(cert), forgeKey: forge.pki.privateKeyFromPem(key) };
}

const isIp = (name: string) => /^\d{1,3}(\.\d{1,3}){3}$/.test(name) || name.includes(':');

/** A certificate for `commonName` signed by `ca`: a client certificate, and a server one when `serverNames` are given. */
export function issueCertificate(ca: CertificateAuthority, commonName: string, options: IssueOptions = {}): KeyAndCert {
  const keys = keyPair();
  const cert = newCertificate(commonName, keys.publicKey, options.validDays ?? 825);
  const server = (options.serverNames ?? []).length > 0;
  cert.setIssuer(ca.forgeCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: server, clientAuth: options.clientAuth ?? true },
    ...(server ? [{ name: 'subjectAltName', altNames: (options.serverNames ?? []).map((n) => (isIp(n) ? { type: 7, ip: n } : { type: 2, value: n })) }] : []),
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: ca.forgeCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.forgeKey, forge.md.sha256.create());
  return { key: keys.pem, cert: forge.pki.certificateToPem(cert) };
}

/** Written whole or not at all (a concurrent reader never sees half a file). */
function writeAtomic(path: string, content: string, mode = 0o644): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode });
  renameSync(tmp, path);
}

/** True when the certificate in `file` is still valid for at least `days`. */
function validFor(file: string, days: number): boolean {
  try {
    const cert = forge.pki.certificateFromPem(readFileSync(file, 'utf8'));
    return cert.validity.notAfter.getTime() > Date.now() + days * DAY_MS;
  } catch {
    return false;
  }
}

async function withLock<T>(lockFile: string, work: () => T): Promise<T> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      closeSync(openSync(lockFile, 'wx'));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      // A lock left by a process that died mid-way is stale after half a minute.
      const age = Date.now() - (statSync(lockFile, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > 30_000) rmSync(lockFile, { force: true });
      if (Date.now() > deadline) throw retryableError('STACK_PKI_LOCKED', `another process holds ${lockFile}; remove it if no stack up is running`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return work();
  } finally {
    rmSync(lockFile, { force: true });
  }
}

/**
 * Makes what is missing (idempotent, safe when several `stack up` run at once): the CA, and each
 * principal's key and certificate, renewed 30 days before they expire. Returns the files.
 */
export async function ensureStackPki(stackDir: string, serverNames: readonly string[]): Promise<StackPkiFiles> {
  const files = stackPkiFiles(stackDir);
  mkdirSync(files.dir, { recursive: true, mode: 0o700 });
  return withLock(join(files.dir, '.lock'), () => {
    const caKeyFile = join(files.dir, 'ca-key.pem');
    let ca: CertificateAuthority;
    if (existsSync(caKeyFile) && existsSync(files.ca) && validFor(files.ca, 30)) {
      ca = loadCertificateAuthority(readFileSync(caKeyFile, 'utf8'), readFileSync(files.ca, 'utf8'));
    } else {
      ca = createCertificateAuthority('Agent Manager local stack CA');
      writeAtomic(caKeyFile, ca.key, 0o600);
      writeAtomic(files.ca, ca.cert);
      // Everything signed by the previous CA is reissued below.
      for (const p of STACK_PRINCIPALS) rmSync(files.principals[p].cert, { force: true });
    }
    for (const principal of STACK_PRINCIPALS) {
      const target = files.principals[principal];
      if (existsSync(target.key) && validFor(target.cert, 30) && (principal !== 'broker' || existsSync(files.brokerKeystore))) continue;
      const issued = issueCertificate(ca, principal, principal === 'broker' ? { serverNames } : {});
      writeAtomic(target.key, issued.key, 0o600);
      writeAtomic(target.cert, issued.cert);
      if (principal === 'broker') writeAtomic(files.brokerKeystore, `${issued.key}${issued.cert}`, 0o600);
    }
    return files;
  });
}
