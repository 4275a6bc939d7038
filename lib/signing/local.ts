/**
 * The local Ed25519 signer (development, tests, or a deployment without Vault). Its keys, oldest
 * version first, come from one of:
 *
 * - a keyring directory: `v1.pem`, `v2.pem`, … (PKCS8 PEM each); `rotate()` writes the next one
 *   (mode 0600), and creates `v1.pem` in an empty or missing directory;
 * - a keyring file: one or more PKCS8 PEM blocks (version = position); `rotate()` appends one; or a
 *   raw 32-byte seed (binary, or its base64/hex text), a single version that cannot rotate;
 * - a value (a secret: `AUDIT_SIGNING_KEY`, possibly a `vault:` reference): PEM block(s) or a
 *   base64/hex seed; it cannot rotate.
 *
 * The keyring is read again on every call, so a `keys rotate` by another process is seen at once.
 * No error message carries key material.
 */
import { createPrivateKey, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { permanentError } from '../errors.ts';
import type { PublicKeyVersion, SignatureEnvelope, Signer } from './signer.ts';
import { rawPublicKey } from './verify.ts';

/** PKCS8 DER header of an Ed25519 private key (RFC 8410), followed by the 32-byte seed. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const PEM_BLOCK = /-----BEGIN PRIVATE KEY-----[\s\S]+?-----END PRIVATE KEY-----/g;
const VERSION_FILE = /^v([1-9]\d*)\.pem$/;

interface LocalKey {
  readonly version: number;
  readonly privateKey: KeyObject;
  readonly createdAt?: string;
}

export type LocalKeySource =
  | { readonly kind: 'directory'; readonly path: string }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'value'; readonly value: string; readonly name: string };

export interface LocalSignerOptions {
  /** The id signatures name (`SignatureEnvelope.keyId`). */
  readonly keyId: string;
  readonly source: LocalKeySource;
}

function ed25519FromSeed(seed: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

/** A seed given as text: 64 hex digits or the base64 of 32 bytes. */
function seedOfText(text: string): Buffer | undefined {
  const trimmed = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) return Buffer.from(trimmed, 'hex');
  const decoded = Buffer.from(trimmed, 'base64');
  return decoded.length === 32 && /^[A-Za-z0-9+/]{43}=$/.test(trimmed) ? decoded : undefined;
}

function ed25519FromPem(pem: string, where: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw permanentError('SIGNING_KEY_INVALID', `${where}: not a PKCS8 PEM private key`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw permanentError('SIGNING_KEY_INVALID', `${where}: a ${key.asymmetricKeyType ?? 'unknown'} key, expected Ed25519`);
  return key;
}

/** The keys of a PEM text (block i = version i+1) or of a seed; throws SIGNING_KEY_INVALID naming `where`. */
function keysOfContent(content: Buffer, where: string): KeyObject[] {
  const text = content.toString('utf8');
  const blocks = text.match(PEM_BLOCK);
  if (blocks !== null) return blocks.map((block, i) => ed25519FromPem(block, `${where} (key ${i + 1})`));
  if (/-----BEGIN/.test(text)) throw permanentError('SIGNING_KEY_INVALID', `${where}: a PEM that is not a PKCS8 private key ("BEGIN PRIVATE KEY"; convert with openssl pkcs8 -topk8 -nocrypt)`);
  if (content.length === 32) return [ed25519FromSeed(content)];
  const seed = seedOfText(text);
  if (seed !== undefined) return [ed25519FromSeed(seed)];
  throw permanentError('SIGNING_KEY_INVALID', `${where}: expected PKCS8 PEM Ed25519 private key(s), or a 32-byte seed (raw, base64 or hex)`);
}

function readOrFail(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
    throw permanentError('SIGNING_KEY_UNREADABLE', `cannot read ${what} ${path} (${code})`);
  }
}

function pemOf(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** Writes `content` to `path` atomically (a temp file renamed over it), readable by the owner only. */
function writeAtomically(path: string, content: string): void {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(temp, content, { mode: 0o600 });
  renameSync(temp, path);
}

export function createLocalSigner(options: LocalSignerOptions): Signer {
  const { keyId, source } = options;

  function load(): LocalKey[] {
    switch (source.kind) {
      case 'value':
        return keysOfContent(Buffer.from(source.value, 'utf8'), source.name).map((privateKey, i) => ({ version: i + 1, privateKey }));
      case 'file': {
        const keys = keysOfContent(readOrFail(source.path, 'the signing key file'), source.path);
        const modified = statSync(source.path).mtime.toISOString();
        // The file's time is when its last version was added; earlier versions' times are unknown.
        return keys.map((privateKey, i) => ({ version: i + 1, privateKey, ...(i === keys.length - 1 ? { createdAt: modified } : {}) }));
      }
      case 'directory': {
        let names: string[];
        try {
          names = readdirSync(source.path);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
          throw permanentError('SIGNING_KEY_UNREADABLE', `cannot read the signing keyring ${source.path} (${(error as NodeJS.ErrnoException).code ?? 'unknown error'})`);
        }
        return names
          .map((name) => ({ name, match: VERSION_FILE.exec(name) }))
          .filter((entry): entry is { name: string; match: RegExpExecArray } => entry.match !== null)
          .map(({ name, match }) => {
            const path = join(source.path, name);
            const [privateKey] = keysOfContent(readOrFail(path, 'the signing key'), path);
            if (privateKey === undefined) throw permanentError('SIGNING_KEY_INVALID', `${path}: no key`);
            return { version: Number(match[1]), privateKey, createdAt: statSync(path).mtime.toISOString() };
          })
          .sort((a, b) => a.version - b.version);
      }
    }
  }

  function loadNonEmpty(): LocalKey[] {
    const keys = load();
    if (keys.length === 0) {
      const where = source.kind === 'value' ? source.name : source.path;
      throw permanentError('SIGNING_KEY_MISSING', `no signing key in ${where} (create the first version with \`agent-manager keys rotate\`)`);
    }
    return keys;
  }

  return {
    keyId,
    kind: 'local',
    async currentVersion() {
      return loadNonEmpty().at(-1)?.version ?? 0;
    },
    async sign(data: Uint8Array, version?: number): Promise<SignatureEnvelope> {
      const keys = loadNonEmpty();
      const key = version === undefined ? keys.at(-1) : keys.find((k) => k.version === version);
      if (key === undefined) throw permanentError('SIGNING_KEY_VERSION_UNKNOWN', `the local signing key ${keyId} has no version ${version ?? '?'} (versions: ${keys.map((k) => k.version).join(', ')})`, undefined, { keyId, version });
      return { algorithm: 'ed25519', keyId, keyVersion: key.version, signature: cryptoSign(null, data, key.privateKey).toString('base64') };
    },
    async publicKeys(): Promise<PublicKeyVersion[]> {
      return load().map((key) => ({ keyId, version: key.version, publicKey: rawPublicKey(key.privateKey), ...(key.createdAt !== undefined ? { createdAt: key.createdAt } : {}) }));
    },
    async rotate(): Promise<number> {
      const { privateKey } = generateKeyPairSync('ed25519');
      if (source.kind === 'directory') {
        mkdirSync(source.path, { recursive: true, mode: 0o700 });
        const next = (load().at(-1)?.version ?? 0) + 1;
        try {
          // 'wx': two rotations at once cannot both write the same version.
          writeFileSync(join(source.path, `v${next}.pem`), pemOf(privateKey), { mode: 0o600, flag: 'wx' });
        } catch (error) {
          throw permanentError('SIGNING_KEY_ROTATION_FAILED', `cannot write version ${next} into the signing keyring ${source.path} (${(error as NodeJS.ErrnoException).code ?? 'unknown error'})`);
        }
        return next;
      }
      if (source.kind === 'file') {
        const content = readOrFail(source.path, 'the signing key file');
        if (content.toString('utf8').match(PEM_BLOCK) === null) {
          throw permanentError('SIGNING_KEY_NOT_ROTATABLE', `${source.path} holds a raw seed, which has one version: rotate with a keyring (a directory, or a PEM file) or Vault Transit`);
        }
        const keys = keysOfContent(content, source.path);
        const text = content.toString('utf8');
        writeAtomically(source.path, `${text}${text.endsWith('\n') ? '' : '\n'}${pemOf(privateKey)}`);
        return keys.length + 1;
      }
      throw permanentError('SIGNING_KEY_NOT_ROTATABLE', `${source.name} is a fixed key: rotate with a keyring (AUDIT_SIGNING_KEY_FILE, a directory or a PEM file) or Vault Transit`);
    },
  };
}
