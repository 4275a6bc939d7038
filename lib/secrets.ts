/**
 * Secrets come from files or from Vault, never from the image or the database, and are never
 * logged: no error message or log line here carries a secret's value or the Vault token.
 *
 * - Files (`<NAME>_FILE`): a secret-bearing variable may be given as the path of a file holding it
 *   (a Kubernetes Secret volume, a Docker secret): `DATABASE_URL_FILE=/run/secrets/database-url`.
 * - Vault: any variable's value may be a reference `vault:<mount>/<path>#<key>`, read from Vault's
 *   KV v2 engine at `GET <VAULT_ADDR>/v1/<mount>/data/<path>` with `VAULT_TOKEN` (or `VAULT_TOKEN_FILE`),
 *   through node-vault (lib/vault.ts).
 *
 * A service loads its configuration with `loadConfig(shape, await loadServiceEnv(process.env))`.
 */
import { readFileSync } from 'node:fs';
import type { Env } from './config.ts';
import type { Logger } from './logger.ts';
import { errorMessage, isAppError, permanentError, retryableError, type AppError } from './errors.ts';
import { createVaultApi, vaultError, vaultFailureOf, type VaultConnectionOptions } from './vault.ts';

/**
 * Variables that carry a secret (or a URL with credentials in it): the ones `<NAME>_FILE` applies
 * to. Only these: other `*_FILE` variables of the project (`INGEST_TLS_KEY_FILE`, `OPA_POLICY_FILE`)
 * are paths the services read themselves.
 */
export const SECRET_VARIABLES: readonly string[] = [
  'DATABASE_URL',
  'REDIS_URL',
  'SCHEMA_REGISTRY_URL',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'VAULT_TOKEN',
  'KAFKA_SASL_USERNAME',
  'KAFKA_SASL_PASSWORD',
  // PEM contents; usually given as files (KAFKA_SSL_CA_FILE, …) or vault: references.
  'KAFKA_SSL_CA',
  'KAFKA_SSL_CERT',
  'KAFKA_SSL_KEY',
  'OTEL_EXPORTER_OTLP_HEADERS',
];

const SECRET_NAME = /(PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|KEY)(_|$)/;

/** True for a variable whose value must never be echoed (the list above, or a secret-looking name). */
export function isSecretVariable(name: string): boolean {
  return SECRET_VARIABLES.includes(name) || SECRET_NAME.test(name);
}

function configError(problems: readonly string[]): AppError {
  return permanentError('CONFIG_INVALID', `invalid configuration:\n  ${problems.join('\n  ')}`);
}

const FILE_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
};

/**
 * Returns `env` with each secret-bearing `X` filled from the file named by `X_FILE` (trailing
 * newlines trimmed) and the `X_FILE` entries left as they were. Errors (a missing or unreadable or
 * empty file, or both `X` and `X_FILE` set) name the variable and the file, never the content, and
 * are collected into one `CONFIG_INVALID` error.
 */
export function resolveSecretFiles(env: Env, options: { readonly extraSecrets?: readonly string[] } = {}): Env {
  const names = [...SECRET_VARIABLES, ...(options.extraSecrets ?? [])];
  const resolved: Record<string, string | undefined> = { ...env };
  const problems: string[] = [];
  for (const name of names) {
    const fileVariable = `${name}_FILE`;
    const path = env[fileVariable];
    if (path === undefined || path === '') continue;
    if (env[name] !== undefined && env[name] !== '') {
      problems.push(`${name}: set both directly and through ${fileVariable} (${path}); set only one`);
      continue;
    }
    let content: string;
    try {
      content = readFileSync(path, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
      problems.push(`${fileVariable}: cannot read ${path} for ${name} (${FILE_ERRORS[code] ?? code})`);
      continue;
    }
    const value = content.replace(/[\r\n]+$/, '');
    if (value === '') {
      problems.push(`${fileVariable}: ${path} is empty (expected the value of ${name})`);
      continue;
    }
    resolved[name] = value;
  }
  if (problems.length > 0) throw configError(problems);
  return resolved;
}

// --- Vault KV v2 -------------------------------------------------------------------------------

export interface VaultReference {
  readonly mount: string;
  readonly path: string;
  readonly key: string;
}

const REFERENCE = /^vault:([^/#\s]+)\/([^#]+)#([^#]+)$/;

/** Parses `vault:<mount>/<path>#<key>`; undefined when `value` is not a reference. */
export function parseVaultReference(value: string): VaultReference | undefined {
  const match = REFERENCE.exec(value.trim());
  if (!match) return undefined;
  const [, mount = '', path = '', key = ''] = match;
  if (path.split('/').some((segment) => segment === '' || segment === '.' || segment === '..')) return undefined;
  return { mount, path, key };
}

export const isVaultReference = (value: string | undefined): value is string => value !== undefined && value.trimStart().startsWith('vault:');

export type VaultClientOptions = VaultConnectionOptions;

export interface VaultClient {
  /** Every key of the latest version of a KV v2 secret. */
  readSecret(mount: string, path: string): Promise<Readonly<Record<string, string>>>;
  /** One key of a KV v2 secret, by reference. */
  read(reference: VaultReference): Promise<string>;
}

const encodePath = (path: string) => path.split('/').map(encodeURIComponent).join('/');
const where = (mount: string, path: string) => `${mount}/${path}`;

/** A reader of Vault's KV v2 engine through node-vault (lib/vault.ts), with typed errors (403 and 4xx permanent; 5xx, 429 and timeouts retryable). */
export function createVaultClient(options: VaultClientOptions): VaultClient {
  if (options.token === '') throw permanentError('CONFIG_INVALID', 'invalid configuration:\n  VAULT_TOKEN: required to read vault: references (or set VAULT_TOKEN_FILE)');
  const api = createVaultApi(options);

  async function readSecret(mount: string, path: string): Promise<Readonly<Record<string, string>>> {
    const context = { mount, path };
    let body: unknown;
    try {
      body = await api.read(`${encodeURIComponent(mount)}/data/${encodePath(path)}`);
    } catch (error) {
      const failure = vaultFailureOf(error);
      if (failure.kind === 'status' && failure.status === 403) throw permanentError('VAULT_FORBIDDEN', `Vault refused to read ${where(mount, path)} (403: the token lacks a read policy for it, or expired)${failure.errors}`, undefined, { ...context, status: 403 });
      if (failure.kind === 'status' && failure.status === 404) throw permanentError('VAULT_SECRET_NOT_FOUND', `no KV v2 secret at ${where(mount, path)} in Vault (404)${failure.errors}`, undefined, { ...context, status: 404 });
      throw vaultError(api, error, `reading ${where(mount, path)}`, context);
    }
    if (typeof body !== 'object' || body === null) {
      throw retryableError('VAULT_BAD_RESPONSE', `Vault's answer for ${where(mount, path)} is not JSON`, undefined, context);
    }
    const data = (body as { data?: { data?: unknown } | null }).data?.data;
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      // A KV v1 mount answers `data` without the inner `data`; a deleted version answers `data: null`.
      throw permanentError('VAULT_BAD_RESPONSE', `Vault's answer for ${where(mount, path)} is not a KV v2 secret (is ${mount} a KV v2 mount, and the latest version not deleted?)`, undefined, context);
    }
    const values: Record<string, string> = {};
    for (const [key, value] of Object.entries(data as Record<string, unknown>)) {
      if (typeof value === 'string') values[key] = value;
      else if (typeof value === 'number' || typeof value === 'boolean') values[key] = String(value);
    }
    return values;
  }

  return {
    readSecret,
    async read(reference) {
      const values = await readSecret(reference.mount, reference.path);
      const value = values[reference.key];
      if (value === undefined) {
        const keys = Object.keys(values);
        throw permanentError('VAULT_KEY_MISSING', `the Vault secret ${where(reference.mount, reference.path)} has no string key "${reference.key}" (its keys: ${keys.join(', ') || 'none'})`, undefined, { ...reference });
      }
      return value;
    },
  };
}

export interface VaultResolveOptions {
  readonly logger?: Logger;
  /** Attempts per secret for retryable failures (Vault sealed or restarting). Default 3. */
  readonly attempts?: number;
  /** Delay before the 2nd attempt, doubled after. Default 500 ms. */
  readonly retryDelayMs?: number;
  readonly timeoutMs?: number;
  /** Test seam. */
  readonly fetch?: typeof fetch;
}

/**
 * Replaces every `vault:<mount>/<path>#<key>` value of `env` with the key's value (each secret is
 * read once). Needs `VAULT_ADDR` and `VAULT_TOKEN` in `env` when any reference is present.
 */
export async function resolveVaultReferences(env: Env, options: VaultResolveOptions = {}): Promise<Env> {
  const references = Object.entries(env).filter((entry): entry is [string, string] => isVaultReference(entry[1]));
  if (references.length === 0) return env;
  const problems: string[] = [];
  const parsed: Array<[string, VaultReference]> = [];
  for (const [name, value] of references) {
    const reference = parseVaultReference(value);
    if (reference) parsed.push([name, reference]);
    else problems.push(`${name}: not a Vault reference of the form vault:<mount>/<path>#<key>`);
  }
  if (!env.VAULT_ADDR) problems.push(`VAULT_ADDR: required because ${references.map(([name]) => name).join(', ')} ${references.length === 1 ? 'is a' : 'are'} vault: reference${references.length === 1 ? '' : 's'}`);
  else if (!env.VAULT_TOKEN) problems.push('VAULT_TOKEN: required to read vault: references (or set VAULT_TOKEN_FILE)');
  if (problems.length > 0) throw configError(problems);

  const client = createVaultClient({ address: env.VAULT_ADDR ?? '', token: env.VAULT_TOKEN ?? '', namespace: env.VAULT_NAMESPACE, timeoutMs: options.timeoutMs, fetch: options.fetch });
  const attempts = options.attempts ?? 3;
  const secrets = new Map<string, Promise<Readonly<Record<string, string>>>>();
  const readOnce = async (mount: string, path: string) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await client.readSecret(mount, path);
      } catch (error) {
        if (!isAppError(error) || !error.retryable || attempt >= attempts) throw error;
        options.logger?.warn({ mount, path, attempt, code: error.code }, 'Vault read failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, (options.retryDelayMs ?? 500) * 2 ** (attempt - 1)));
      }
    }
  };

  const resolved: Record<string, string | undefined> = { ...env };
  await Promise.all(
    parsed.map(async ([name, reference]) => {
      const id = `${reference.mount}/${reference.path}`;
      let secret = secrets.get(id);
      if (!secret) secrets.set(id, (secret = readOnce(reference.mount, reference.path)));
      let values: Readonly<Record<string, string>>;
      try {
        values = await secret;
      } catch (error) {
        // The variable's name is added; the code and retryability stay the reader's.
        if (isAppError(error)) throw (error.retryable ? retryableError : permanentError)(error.code, `${name}: ${error.message}`, undefined, { ...error.context, variable: name });
        throw retryableError('VAULT_UNAVAILABLE', `${name}: reading ${id} from Vault failed (${errorMessage(error)})`);
      }
      const value = values[reference.key];
      if (value === undefined) throw permanentError('VAULT_KEY_MISSING', `${name}: the Vault secret ${id} has no string key "${reference.key}"`, undefined, { variable: name, mount: reference.mount, path: reference.path });
      resolved[name] = value;
    }),
  );
  options.logger?.info({ variables: parsed.map(([name]) => name) }, 'configuration read from Vault');
  return resolved;
}

export interface ServiceEnvOptions extends VaultResolveOptions {
  /** More variables to which `<NAME>_FILE` applies (a service's own secrets). */
  readonly extraSecrets?: readonly string[];
}

/**
 * The environment a service validates with `loadConfig`: `<NAME>_FILE` secrets read, then
 * `vault:` references resolved (VAULT_TOKEN may itself come from VAULT_TOKEN_FILE).
 */
export async function loadServiceEnv(processEnv: Env, options: ServiceEnvOptions = {}): Promise<Env> {
  return resolveVaultReferences(resolveSecretFiles(processEnv, { extraSecrets: options.extraSecrets }), options);
}
