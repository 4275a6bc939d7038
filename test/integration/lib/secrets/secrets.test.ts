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

  it('is what loadServiceEnv does first, also exported next to loadConfig; defaults fill only what is left unset', async () => {
    writeFileSync(join(dir, 'database-url'), 'postgres://u:p@h:5432/d\n');
    const defaults = { DATABASE_URL: 'postgres://local:local@127.0.0.1:15432/am', LOG_LEVEL: 'debug', KAFKA_BROKERS: '127.0.0.1:19092' };
    const env = await loadServiceEnvFromConfig({ DATABASE_URL_FILE: join(dir, 'database-url'), LOG_LEVEL: 'warn' }, { defaults });
    const config = loadConfig({ ...commonConfigShape, ...databaseConfigShape }, env);
    expect(config.DATABASE_URL).toBe('postgres://u:p@h:5432/d');
    expect(config.LOG_LEVEL).toBe('warn');
    expect(config.KAFKA_BROKERS).toEqual(['127.0.0.1:19092']);
  });
});

/**
 * A stand-in for Vault's KV v2 HTTP API (`GET /v1/<mount>/data/<path>`, `X-Vault-Token`, the
 * `{ data: { data, metadata } }` answer and `{ errors: [...] }` failures). No Vault binary can be
 * installed on this machine, so the reader is tested against this in-process server instead.
 */
async function startVaultStandIn(secrets: Record<string, Record<string, unknown>>) {
  const requests: Array<{ path: string; token: string | undefined; namespace: string | undefined }> = [];
  const behaviour: { status?: number; delayMs?: number; failTimes?: number; body?: unknown } = {};
  const server: Server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const token = request.headers['x-vault-token'] as string | undefined;
    requests.push({ path: request.url ?? '', token, namespace: request.headers['x-vault-namespace'] as string | undefined });
    const reply = (status: number, body: unknown) => response.writeHead(status, { 'content-type': 'application/json' }).end(typeof body === 'string' ? body : JSON.stringify(body));
    const respond = () => {
      if (behaviour.failTimes && behaviour.failTimes > 0) {
        behaviour.failTimes--;
        return reply(503, { errors: ['Vault is sealed'] });
      }
      if (behaviour.status) return reply(behaviour.status, behaviour.body ?? { errors: ['injected failure'] });
      if (behaviour.body) return reply(200, behaviour.body);
      if (token !== TOKEN) return reply(403, { errors: ['permission denied'] });
      const match = /^\/v1\/([^/]+)\/data\/(.+)$/.exec(request.url ?? '');
      const data = match ? secrets[`${match[1]}/${decodeURIComponent(match[2] ?? '')}`] : undefined;
      if (!data) return reply(404, { errors: [] });
      reply(200, { request_id: 'r', lease_id: '', renewable: false, lease_duration: 0, data: { data, metadata: { created_time: '2026-01-01T00:00:00Z', deletion_time: '', destroyed: false, version: 3 } } });
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
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

describe('Vault KV v2 reader (against an in-process stand-in for Vault)', () => {
  let vault: Awaited<ReturnType<typeof startVaultStandIn>>;
  beforeEach(async () => {
    vault = await startVaultStandIn({
      'secret/agent-manager/db': { url: `postgres://app:${DB_PASSWORD}@db:5432/am`, port: 5432 },
      'kv/team a/s3': { secret: 's3-secret' },
    });
  });
  afterEach(() => vault.close());

  it('resolves vault: references with the token, reading each secret once', async () => {
    const lines: string[] = [];
    const logger = createLogger('secrets-test', 'debug', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
    const env = await resolveVaultReferences(
      {
        VAULT_ADDR: vault.address,
        VAULT_TOKEN: TOKEN,
        VAULT_NAMESPACE: 'team-a',
        DATABASE_URL: 'vault:secret/agent-manager/db#url',
        DATABASE_PORT: 'vault:secret/agent-manager/db#port',
        S3_SECRET_ACCESS_KEY: 'vault:kv/team a/s3#secret',
        LOG_LEVEL: 'info',
      },
      { logger },
    );
    expect(env.DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
    expect(env.DATABASE_PORT).toBe('5432');
    expect(env.S3_SECRET_ACCESS_KEY).toBe('s3-secret');
    expect(env.LOG_LEVEL).toBe('info');
    expect(vault.requests.map((r) => r.path).sort()).toEqual(['/v1/kv/data/team%20a/s3', '/v1/secret/data/agent-manager/db']);
    expect(vault.requests.every((r) => r.token === TOKEN && r.namespace === 'team-a')).toBe(true);
    // The log names the variables, never a value or the token.
    const logged = lines.join('');
    expect(logged).toContain('DATABASE_URL');
    expect(logged).not.toContain(DB_PASSWORD);
    expect(logged).not.toContain(TOKEN);
  });

  it('takes VAULT_TOKEN from VAULT_TOKEN_FILE (loadServiceEnv: files first, then Vault)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'am-vault-'));
    try {
      writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
      const env = await loadServiceEnv({ VAULT_ADDR: vault.address, VAULT_TOKEN_FILE: join(dir, 'token'), DATABASE_URL: 'vault:secret/agent-manager/db#url' });
      expect(loadConfig({ DATABASE_URL: z.url() }, env).DATABASE_URL).toBe(`postgres://app:${DB_PASSWORD}@db:5432/am`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('classifies failures: 403, 404, a missing key and 4xx are permanent; 5xx and timeouts retryable; no value or token in any message', async () => {
    const client = createVaultClient({ address: vault.address, token: TOKEN, timeoutMs: 300 });
    const wrongToken = createVaultClient({ address: vault.address, token: 'hvs.wrong-token-do-not-leak' });

    const forbidden = await thrown(() => wrongToken.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(forbidden), isRetryable(forbidden)]).toEqual(['VAULT_FORBIDDEN', false]);
    expect(forbidden.message).toMatch(/refused to read secret\/agent-manager\/db \(403.*permission denied/);
    expect(forbidden.message).not.toContain('wrong-token');

    const missing = await thrown(() => client.read({ mount: 'secret', path: 'nope', key: 'url' }));
    expect([errorCode(missing), isRetryable(missing)]).toEqual(['VAULT_SECRET_NOT_FOUND', false]);

    const noKey = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'password' }));
    expect([errorCode(noKey), isRetryable(noKey)]).toEqual(['VAULT_KEY_MISSING', false]);
    expect(noKey.message).toContain('its keys: url, port');
    expect(noKey.message).not.toContain(DB_PASSWORD);

    vault.behaviour.status = 503;
    const sealed = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(sealed), isRetryable(sealed)]).toEqual(['VAULT_UNAVAILABLE', true]);
    expect(sealed.message).toContain('503');

    vault.behaviour.status = 400;
    const bad = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(bad), isRetryable(bad)]).toEqual(['VAULT_REQUEST_FAILED', false]);

    vault.behaviour.status = undefined;
    vault.behaviour.body = { data: { url: 'kv-v1-shape' } };
    const v1 = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(v1), isRetryable(v1)]).toEqual(['VAULT_BAD_RESPONSE', false]);
    expect(v1.message).not.toContain('kv-v1-shape');

    vault.behaviour.body = undefined;
    vault.behaviour.delayMs = 2_000;
    const slow = await thrown(() => client.read({ mount: 'secret', path: 'agent-manager/db', key: 'url' }));
    expect([errorCode(slow), isRetryable(slow)]).toEqual(['VAULT_TIMEOUT', true]);

    const down = createVaultClient({ address: 'http://127.0.0.1:9', token: TOKEN });
    const unreachable = await thrown(() => down.read({ mount: 'secret', path: 'x', key: 'y' }));
    expect([errorCode(unreachable), isRetryable(unreachable)]).toEqual(['VAULT_UNAVAILABLE', true]);

    for (const error of [forbidden, missing, noKey, sealed, bad, v1, slow, unreachable]) {
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

  it('refuses references without VAULT_ADDR or VAULT_TOKEN, and malformed ones, as configuration errors', async () => {
    const noAddress = await thrown(() => resolveVaultReferences({ DATABASE_URL: 'vault:secret/db#url' }));
    expect(errorCode(noAddress)).toBe('CONFIG_INVALID');
    expect(noAddress.message).toContain('VAULT_ADDR: required because DATABASE_URL is a vault: reference');
    const noToken = await thrown(() => resolveVaultReferences({ VAULT_ADDR: vault.address, DATABASE_URL: 'vault:secret/db#url' }));
    expect(noToken.message).toContain('VAULT_TOKEN: required');
    const malformed = await thrown(() => resolveVaultReferences({ VAULT_ADDR: vault.address, VAULT_TOKEN: TOKEN, REDIS_URL: 'vault:secret-without-key' }));
    expect(malformed.message).toContain('REDIS_URL: not a Vault reference');
    expect(vault.requests).toHaveLength(0);
  });
});
