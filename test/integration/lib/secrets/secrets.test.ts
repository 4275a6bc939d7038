import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { z } from 'zod';
import { commonConfigShape, databaseConfigShape, loadConfig, loadServiceEnv as loadServiceEnvFromConfig } from '../../../../lib/config.ts';
import { errorCode, isRetryable } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createVaultClient, loadServiceEnv, resolveSecretFiles, resolveVaultReferences } from '../../../../lib/secrets.ts';
import { LOCAL_VAULT } from '../../../../dev/stack/vault.ts';
import { uniqueName } from '../../../support/stack.ts';

const DB_PASSWORD = 'db-pa55-do-not-leak';
const TOKEN = 'hvs.test-token-do-not-leak';

/** Runs `fn`, returns what it threw (or fails the test if it did not throw). */
async function thrown(fn: () => unknown): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

describe('<NAME>_FILE secrets, with real files', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'am-secrets-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('fills each secret variable from its file, trailing newline trimmed, and leaves the rest alone', () => {
    writeFileSync(join(dir, 'database-url'), `postgres://app:${DB_PASSWORD}@db:5432/am\n`);
    writeFileSync(join(dir, 's3'), 'secret-key\r\n');
    writeFileSync(join(dir, 'token'), 'hvs.abc');
    const env = resolveSecretFiles({
      DATABASE_URL_FILE: join(dir, 'database-url'),
      S3_SECRET_ACCESS_KEY_FILE: join(dir, 's3'),
      VAULT_TOKEN_FILE: join(dir, 'token'),
      // A *_FILE variable that is a path the service reads itself, not a secret reference.
      INGEST_TLS_KEY_FILE: '/etc/tls/key.pem',
      LOG_LEVEL: 'info',
    });
    expect(env.DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
    expect(env.S3_SECRET_ACCESS_KEY).toBe('secret-key');
    expect(env.VAULT_TOKEN).toBe('hvs.abc');
    expect(env.INGEST_TLS_KEY).toBeUndefined();
    expect(env.INGEST_TLS_KEY_FILE).toBe('/etc/tls/key.pem');
    expect(env.LOG_LEVEL).toBe('info');
    // The resolved environment passes the services' validation.
    expect(loadConfig({ ...databaseConfigShape }, env).DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
  });

  it('applies to a service’s own extra secret variables', () => {
    writeFileSync(join(dir, 'signing'), 'k3y\n');
    expect(resolveSecretFiles({ SIGNING_SEED_FILE: join(dir, 'signing') }, { extraSecrets: ['SIGNING_SEED'] }).SIGNING_SEED).toBe('k3y');
  });

  it('refuses a missing, unreadable or empty file, or both X and X_FILE, naming variable and file but never a value', async () => {
    writeFileSync(join(dir, 'empty'), '\n');
    writeFileSync(join(dir, 'locked'), DB_PASSWORD);
    chmodSync(join(dir, 'locked'), 0o000);
    writeFileSync(join(dir, 'redis'), `redis://:${DB_PASSWORD}@cache:6379`);
    const error = await thrown(() =>
      resolveSecretFiles({
        DATABASE_URL_FILE: join(dir, 'missing'),
        S3_SECRET_ACCESS_KEY_FILE: join(dir, 'empty'),
        VAULT_TOKEN_FILE: join(dir, 'locked'),
        REDIS_URL: `redis://:${DB_PASSWORD}@cache:6379`,
        REDIS_URL_FILE: join(dir, 'redis'),
      }),
    );
    expect(errorCode(error)).toBe('CONFIG_INVALID');
    expect(isRetryable(error)).toBe(false);
    expect(error.message).toContain(`DATABASE_URL_FILE: cannot read ${join(dir, 'missing')} for DATABASE_URL (no such file)`);
    expect(error.message).toContain(`S3_SECRET_ACCESS_KEY_FILE: ${join(dir, 'empty')} is empty`);
    expect(error.message).toContain('REDIS_URL: set both directly and through REDIS_URL_FILE');
    // Root reads any file: the permission case is only checked when the tests run as another user.
    if (process.getuid?.() !== 0) expect(error.message).toContain(`VAULT_TOKEN_FILE: cannot read ${join(dir, 'locked')} for VAULT_TOKEN (permission denied)`);
    expect(error.message).not.toContain(DB_PASSWORD);
  });

  it('is what loadServiceEnv does first, also exported next to loadConfig', async () => {
    writeFileSync(join(dir, 'database-url'), 'postgres://u:p@h:5432/d\n');
    const env = await loadServiceEnvFromConfig({ DATABASE_URL_FILE: join(dir, 'database-url'), LOG_LEVEL: 'warn', KAFKA_BROKERS: 'kafka:9092', SCHEMA_REGISTRY_URL: 'http://registry:8081' });
    const config = loadConfig({ ...commonConfigShape, ...databaseConfigShape }, env);
    expect(config.DATABASE_URL).toBe('postgres://u:p@h:5432/d');
    expect(config.LOG_LEVEL).toBe('warn');
    expect(config.KAFKA_BROKERS).toEqual(['kafka:9092']);
  });
});

/** The stack's OpenBao (or the Vault named by VAULT_ADDR/VAULT_TOKEN), with a root token. */
const REAL_VAULT = {
  address: process.env.VAULT_ADDR ?? `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`,
  token: process.env.VAULT_TOKEN ?? LOCAL_VAULT.rootToken,
};

async function vaultApi(method: string, path: string, body?: unknown): Promise<void> {
  const response = await fetch(`${REAL_VAULT.address}/v1/${path}`, {
    method,
    headers: { 'x-vault-token': REAL_VAULT.token, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
}

describe('Vault KV v2 reader, against the stack’s real OpenBao', () => {
  // Each run writes under its own mounts and paths, and removes its mounts afterwards.
  const kv2 = uniqueName('kv2');
  const kv1 = uniqueName('kv1');
  let readOnlyToken: string;

  beforeAll(async () => {
    await vaultApi('POST', `sys/mounts/${kv2}`, { type: 'kv', options: { version: '2' } });
    await vaultApi('POST', `sys/mounts/${kv1}`, { type: 'kv', options: { version: '1' } });
    await vaultApi('POST', `${kv2}/data/agent-manager/db`, { data: { url: `postgres://app:${DB_PASSWORD}@db:5432/am`, port: 5432 } });
    await vaultApi('POST', `${kv2}/data/team a/s3`, { data: { secret: 's3-secret' } });
    // A KV v1 secret at the path a v2 read asks for: the answer has v1's shape (no data.data).
    await vaultApi('POST', `${kv1}/data/agent-manager/db`, { url: 'kv-v1-shape' });
    // A token whose policy may read nothing: the server answers 403.
    const created = await fetch(`${REAL_VAULT.address}/v1/auth/token/create`, {
      method: 'POST',
      headers: { 'x-vault-token': REAL_VAULT.token, 'content-type': 'application/json' },
      body: JSON.stringify({ policies: ['default'], no_default_policy: false, ttl: '10m' }),
    });
    readOnlyToken = ((await created.json()) as { auth: { client_token: string } }).auth.client_token;
  });

  afterAll(async () => {
    await vaultApi('DELETE', `sys/mounts/${kv2}`).catch(() => undefined);
    await vaultApi('DELETE', `sys/mounts/${kv1}`).catch(() => undefined);
  });

  it('resolves vault: references with the token, reading each secret once, logging no value or token', async () => {
    const lines: string[] = [];
    const logger = createLogger('secrets-test', 'debug', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
    const paths: string[] = [];
    const countingFetch: typeof fetch = (input, init) => {
      paths.push(new URL(input instanceof Request ? input.url : input.toString()).pathname);
      return fetch(input, init);
    };
    const env = await resolveVaultReferences(
      {
        VAULT_ADDR: REAL_VAULT.address,
        VAULT_TOKEN: REAL_VAULT.token,
        DATABASE_URL: `vault:${kv2}/agent-manager/db#url`,
        DATABASE_PORT: `vault:${kv2}/agent-manager/db#port`,
        S3_SECRET_ACCESS_KEY: `vault:${kv2}/team a/s3#secret`,
        LOG_LEVEL: 'info',
      },
      { logger, fetch: countingFetch },
    );
    expect(env.DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
    expect(env.DATABASE_PORT).toBe('5432');
    expect(env.S3_SECRET_ACCESS_KEY).toBe('s3-secret');
    expect(env.LOG_LEVEL).toBe('info');
    expect(paths.sort()).toEqual([`/v1/${kv2}/data/agent-manager/db`, `/v1/${kv2}/data/team%20a/s3`]);
    const logged = lines.join('');
    expect(logged).toContain('DATABASE_URL');
    expect(logged).not.toContain(DB_PASSWORD);
    expect(logged).not.toContain(REAL_VAULT.token);
  });

  it('takes VAULT_TOKEN from VAULT_TOKEN_FILE (loadServiceEnv: files first, then Vault)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'am-vault-'));
    try {
      writeFileSync(join(dir, 'token'), `${REAL_VAULT.token}\n`);
      const env = await loadServiceEnv({ VAULT_ADDR: REAL_VAULT.address, VAULT_TOKEN_FILE: join(dir, 'token'), DATABASE_URL: `vault:${kv2}/agent-manager/db#url` });
      expect(loadConfig({ DATABASE_URL: z.url() }, env).DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('classifies the server’s refusals: 403, 404, a missing key and a KV v1 answer are permanent; an unreachable server is retryable', async () => {
    const client = createVaultClient({ address: REAL_VAULT.address, token: REAL_VAULT.token });
    const forbiddenClient = createVaultClient({ address: REAL_VAULT.address, token: readOnlyToken });

    const forbidden = await thrown(() => forbiddenClient.read({ mount: kv2, path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(forbidden), isRetryable(forbidden)]).toEqual(['VAULT_FORBIDDEN', false]);
    expect(forbidden.message).toMatch(new RegExp(`refused to read ${kv2}/agent-manager/db \\(403[\\s\\S]*permission denied`));
    expect(forbidden.message).not.toContain(readOnlyToken);

    const missing = await thrown(() => client.read({ mount: kv2, path: 'nope', key: 'url' }));
    expect([errorCode(missing), isRetryable(missing)]).toEqual(['VAULT_SECRET_NOT_FOUND', false]);

    const noKey = await thrown(() => client.read({ mount: kv2, path: 'agent-manager/db', key: 'password' }));
    expect([errorCode(noKey), isRetryable(noKey)]).toEqual(['VAULT_KEY_MISSING', false]);
    expect(noKey.message).toContain('its keys: port, url');
    expect(noKey.message).not.toContain(DB_PASSWORD);

    const v1 = await thrown(() => client.read({ mount: kv1, path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(v1), isRetryable(v1)]).toEqual(['VAULT_BAD_RESPONSE', false]);
    expect(v1.message).not.toContain('kv-v1-shape');

    const down = createVaultClient({ address: 'http://127.0.0.1:9', token: REAL_VAULT.token });
    const unreachable = await thrown(() => down.read({ mount: kv2, path: 'x', key: 'y' }));
    expect([errorCode(unreachable), isRetryable(unreachable)]).toEqual(['VAULT_UNAVAILABLE', true]);

    for (const error of [forbidden, missing, noKey, v1, unreachable]) {
      expect(error.message).not.toContain(REAL_VAULT.token);
      expect(error.message).not.toContain(DB_PASSWORD);
    }
  });

  it('refuses references without VAULT_ADDR or VAULT_TOKEN, and malformed ones, as configuration errors', async () => {
    const noAddress = await thrown(() => resolveVaultReferences({ DATABASE_URL: `vault:${kv2}/db#url` }));
    expect(errorCode(noAddress)).toBe('CONFIG_INVALID');
    expect(noAddress.message).toContain('VAULT_ADDR: required because DATABASE_URL is a vault: reference');
    const noToken = await thrown(() => resolveVaultReferences({ VAULT_ADDR: REAL_VAULT.address, DATABASE_URL: `vault:${kv2}/db#url` }));
    expect(noToken.message).toContain('VAULT_TOKEN: required');
    const malformed = await thrown(() => resolveVaultReferences({ VAULT_ADDR: REAL_VAULT.address, VAULT_TOKEN: REAL_VAULT.token, REDIS_URL: 'vault:secret-without-key' }));
    expect(malformed.message).toContain('REDIS_URL: not a Vault reference');
  });
});

/**
 * Failures the shared OpenBao cannot be made to produce without disturbing every other test (a
 * sealed server's 503, a 400, a reply slower than the timeout, a flapping server, the enterprise
 * namespace header): an in-process server that answers in Vault's KV v2 shape injects them.
 */
async function startFaultyVault(secrets: Record<string, Record<string, unknown>>) {
  const requests: Array<{ path: string; token: string | undefined; namespace: string | undefined }> = [];
  const behaviour: { status?: number; delayMs?: number; failTimes?: number } = {};
  const server: Server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const token = request.headers['x-vault-token'] as string | undefined;
    requests.push({ path: request.url ?? '', token, namespace: request.headers['x-vault-namespace'] as string | undefined });
    const reply = (status: number, body: unknown) => response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    const respond = () => {
      if (behaviour.failTimes && behaviour.failTimes > 0) {
        behaviour.failTimes--;
        return reply(503, { errors: ['Vault is sealed'] });
      }
      if (behaviour.status) return reply(behaviour.status, { errors: ['injected failure'] });
      const match = /^\/v1\/([^/]+)\/data\/(.+)$/.exec(request.url ?? '');
      const data = match ? secrets[`${match[1]}/${decodeURIComponent(match[2] ?? '')}`] : undefined;
      if (!data) return reply(404, { errors: [] });
      reply(200, { data: { data, metadata: { version: 1 } } });
    };
    if (behaviour.delayMs) setTimeout(respond, behaviour.delayMs).unref();
    else respond();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    address: `http://127.0.0.1:${port}`,
    requests,
    behaviour,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('Vault KV v2 reader, injected failures (in-process server)', () => {
  let vault: Awaited<ReturnType<typeof startFaultyVault>>;
  beforeEach(async () => {
    vault = await startFaultyVault({ 'secret/agent-manager/db': { url: `postgres://app:${DB_PASSWORD}@db:5432/am` } });
  });
  afterEach(() => vault.close());

  it('sends the namespace header with the token', async () => {
    await resolveVaultReferences({ VAULT_ADDR: vault.address, VAULT_TOKEN: TOKEN, VAULT_NAMESPACE: 'team-a', DATABASE_URL: 'vault:secret/agent-manager/db#url' });
    expect(vault.requests).toEqual([{ path: '/v1/secret/data/agent-manager/db', token: TOKEN, namespace: 'team-a' }]);
  });

  it('classifies 5xx and timeouts as retryable, other 4xx as permanent; no value or token in any message', async () => {
    const client = createVaultClient({ address: vault.address, token: TOKEN, timeoutMs: 300 });
    vault.behaviour.status = 503;
    const sealed = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(sealed), isRetryable(sealed)]).toEqual(['VAULT_UNAVAILABLE', true]);
    expect(sealed.message).toContain('503');

    vault.behaviour.status = 400;
    const bad = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(bad), isRetryable(bad)]).toEqual(['VAULT_REQUEST_FAILED', false]);

    vault.behaviour.status = undefined;
    vault.behaviour.delayMs = 2_000;
    const slow = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(slow), isRetryable(slow)]).toEqual(['VAULT_TIMEOUT', true]);

    for (const error of [sealed, bad, slow]) {
      expect(error.message).not.toContain(TOKEN);
      expect(error.message).not.toContain(DB_PASSWORD);
    }
  });

  it('retries retryable failures a few times, then names the variable in the error', async () => {
    vault.behaviour.failTimes = 2;
    const env = await resolveVaultReferences({ VAULT_ADDR: vault.address, VAULT_TOKEN: TOKEN, DATABASE_URL: 'vault:secret/agent-manager/db#url' }, { retryDelayMs: 10 });
    expect(env.DATABASE_URL).toContain('postgres://');
    expect(vault.requests).toHaveLength(3);

    vault.behaviour.failTimes = 5;
    const error = await thrown(() => resolveVaultReferences({ VAULT_ADDR: vault.address, VAULT_TOKEN: TOKEN, DATABASE_URL: 'vault:secret/agent-manager/db#url' }, { retryDelayMs: 10, attempts: 2 }));
    expect([errorCode(error), isRetryable(error)]).toEqual(['VAULT_UNAVAILABLE', true]);
    expect(error.message).toMatch(/^DATABASE_URL: Vault answered 503/);
  });
});
