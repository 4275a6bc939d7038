import { createServer, type Server } from 'node:http';
import { type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { LOCAL_VAULT } from '../../../../dev/stack/vault.ts';
import { errorCode, isRetryable } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createMetrics } from '../../../../lib/metrics.ts';
import { loadConfig } from '../../../../lib/config.ts';
import { createSignerFromConfig, signerConfigShape } from '../../../../lib/signing/config.ts';
import { startKeyRotationSchedule } from '../../../../lib/signing/rotation.ts';
import { createTransitSigner } from '../../../../lib/signing/transit.ts';
import { parsePublicKeysDocument, verifySignature } from '../../../../lib/signing/verify.ts';
import { createVaultApi } from '../../../../lib/vault.ts';
import { uniqueName } from '../../../support/stack.ts';

/** The stack's OpenBao (or the Vault named by VAULT_ADDR/VAULT_TOKEN), with a root token. */
const VAULT = {
  address: process.env.VAULT_ADDR ?? `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`,
  token: process.env.VAULT_TOKEN ?? LOCAL_VAULT.rootToken,
};
const admin = createVaultApi(VAULT);

/** A Transit key of this test's own (the stack's shared key is left alone), removed afterwards. */
async function createTestKey(): Promise<string> {
  const name = uniqueName('am-signing-test');
  await admin.write(`${LOCAL_VAULT.transitMount}/keys/${name}`, { type: 'ed25519' });
  return name;
}
async function deleteTestKey(name: string): Promise<void> {
  await admin.write(`${LOCAL_VAULT.transitMount}/keys/${name}/config`, { deletion_allowed: true });
  await admin.delete(`${LOCAL_VAULT.transitMount}/keys/${name}`);
}

async function failure(work: () => Promise<unknown>): Promise<Error> {
  try {
    await work();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

function captureLogs() {
  const lines: string[] = [];
  const logger = createLogger('signing-test', 'debug', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
  return { logger, text: () => lines.join('') };
}

describe('Vault Transit signer, against the stack’s real OpenBao', () => {
  const keys: string[] = [];
  afterAll(async () => {
    for (const key of keys) await deleteTestKey(key).catch(() => undefined);
  });

  it('signs through Transit; an auditor verifies with the published public key alone; rotation keeps old signatures valid', async () => {
    const key = await createTestKey();
    keys.push(key);
    const signer = createSignerFromConfig(loadConfig(signerConfigShape, { AUDIT_SIGNER: 'vault-transit', VAULT_ADDR: VAULT.address, VAULT_TOKEN: VAULT.token, AUDIT_TRANSIT_KEY: key }));
    expect([signer.kind, signer.keyId, await signer.currentVersion()]).toEqual(['vault-transit', key, 1]);

    const day1 = Buffer.from('{"day":"2026-12-01","format":"agent-manager.audit-manifest/v1"}');
    const first = await signer.sign(day1);
    expect(first).toMatchObject({ algorithm: 'ed25519', keyId: key, keyVersion: 1 });
    expect(Buffer.from(first.signature, 'base64')).toHaveLength(64);

    // What is published (`keys public --json`), read back as an auditor would, with no Vault at hand.
    const published = parsePublicKeysDocument(JSON.stringify({ format: 'agent-manager.public-keys/v1', algorithm: 'ed25519', keys: await signer.publicKeys() }));
    expect(published).toHaveLength(1);
    expect(published[0]?.createdAt).toMatch(/^\d{4}-\d{2}-\d{2}T/);
    expect(verifySignature(day1, first, published)).toBe(true);
    expect(verifySignature(Buffer.from(`${day1.toString()} `), first, published)).toBe(false);
    // Transit agrees: the envelope is the raw signature of its vault:v1: form.
    const checked = (await admin.write(`${LOCAL_VAULT.transitMount}/verify/${key}`, { input: day1.toString('base64'), signature: `vault:v1:${first.signature}` })) as { data: { valid: boolean } };
    expect(checked.data.valid).toBe(true);

    expect(await signer.rotate()).toBe(2);
    expect(await signer.currentVersion()).toBe(2);
    const day2 = Buffer.from('{"day":"2026-12-02"}');
    const second = await signer.sign(day2);
    expect(second.keyVersion).toBe(2);
    const pinned = await signer.sign(day2, 1);
    expect(pinned.keyVersion).toBe(1);

    const after = await signer.publicKeys();
    expect(after.map((k) => k.version)).toEqual([1, 2]);
    expect(after[0]?.publicKey).toBe(published[0]?.publicKey);
    expect(after[1]?.publicKey).not.toBe(after[0]?.publicKey);
    expect(verifySignature(day1, first, after)).toBe(true);
    expect(verifySignature(day2, second, after)).toBe(true);
    expect(verifySignature(day2, pinned, after)).toBe(true);
    // A signature checked against the wrong version fails.
    expect(verifySignature(day2, { ...second, keyVersion: 1 }, after)).toBe(false);
    // The old key set alone does not know version 2.
    expect(verifySignature(day2, second, published)).toBe(false);

    const tooNew = await failure(() => signer.sign(day2, 7));
    expect([errorCode(tooNew), isRetryable(tooNew)]).toEqual(['SIGNING_KEY_VERSION_UNKNOWN', false]);
  });

  it('rotates on schedule when the latest version is older than the interval, counting and logging without the token', async () => {
    const key = await createTestKey();
    keys.push(key);
    const metrics = createMetrics('test', { defaultMetrics: false });
    const { logger, text } = captureLogs();
    const signer = createTransitSigner({ ...VAULT, mount: LOCAL_VAULT.transitMount, key });
    // Any age is too old for a 1 ms interval; the first check runs at start.
    const schedule = startKeyRotationSchedule({ signer, intervalMs: 1, checkEveryMs: 3_600_000, metrics, logger });
    try {
      const deadline = Date.now() + 30_000;
      while ((await signer.currentVersion()) < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(await signer.currentVersion()).toBe(2);
    } finally {
      schedule.stop();
    }
    const last = (await metrics.registry.getSingleMetric('agent_manager_signing_key_last_rotation_timestamp_seconds')?.get())?.values[0]?.value ?? 0;
    expect(last).toBeGreaterThan(Date.now() / 1000 - 600);
    expect(text()).toContain('signing key rotated (scheduled)');
    expect(text()).not.toContain(VAULT.token);
  });

  it('classifies failures: missing key and 403 permanent, unreachable retryable; the token is in no message and no log', async () => {
    const created = (await admin.write('auth/token/create', { policies: ['default'], ttl: '10m' })) as { auth: { client_token: string } };
    const weakToken = created.auth.client_token;
    const key = await createTestKey();
    keys.push(key);

    const missing = await failure(() => createTransitSigner({ ...VAULT, mount: LOCAL_VAULT.transitMount, key: `${key}-absent` }).sign(Buffer.from('x')));
    expect([errorCode(missing), isRetryable(missing)]).toEqual(['VAULT_TRANSIT_KEY_NOT_FOUND', false]);

    const weak = createTransitSigner({ address: VAULT.address, token: weakToken, mount: LOCAL_VAULT.transitMount, key });
    const forbidden = await failure(() => weak.sign(Buffer.from('x')));
    expect([errorCode(forbidden), isRetryable(forbidden)]).toEqual(['VAULT_FORBIDDEN', false]);
    expect(forbidden.message).toMatch(/403[\s\S]*permission denied/);

    // A port nobody listens on.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const down = await failure(() => createTransitSigner({ address: `http://127.0.0.1:${port}`, token: VAULT.token, mount: 'transit', key }).sign(Buffer.from('x')));
    expect([errorCode(down), isRetryable(down)]).toEqual(['VAULT_UNAVAILABLE', true]);
    expect(down.message).toContain('ECONNREFUSED');

    // The rotation schedule with the weak token: the failure is counted and logged, the token is not.
    const metrics = createMetrics('test', { defaultMetrics: false });
    const { logger, text } = captureLogs();
    const schedule = startKeyRotationSchedule({ signer: weak, intervalMs: 1, checkEveryMs: 3_600_000, metrics, logger });
    try {
      expect(await schedule.check()).toMatchObject({ outcome: 'failed', code: 'VAULT_FORBIDDEN' });
    } finally {
      schedule.stop();
    }
    expect((await metrics.registry.getSingleMetric('agent_manager_key_rotation_failures_total')?.get())?.values[0]?.value).toBeGreaterThanOrEqual(1);
    logger.error({ err: forbidden }, 'an error logged whole, as a service would');
    logger.error({ err: down }, 'an error logged whole, as a service would');
    expect(text()).toContain('VAULT_FORBIDDEN');
    for (const error of [missing, forbidden, down]) {
      expect(error.message).not.toContain(VAULT.token);
      expect(error.message).not.toContain(weakToken);
      expect(JSON.stringify(error)).not.toContain(weakToken);
    }
    expect(text()).not.toContain(weakToken);
    expect(text()).not.toContain(VAULT.token);
  });
});

describe('Vault Transit signer, injected failures (in-process server)', () => {
  const TOKEN = 'hvs.transit-token-do-not-leak';
  let server: Server;
  let address = '';
  const behaviour: { status: number; delayMs: number } = { status: 503, delayMs: 0 };
  beforeAll(async () => {
    server = createServer((request, response) => {
      const reply = () => response.writeHead(behaviour.status, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: ['injected failure'] }));
      if (behaviour.delayMs > 0) setTimeout(reply, behaviour.delayMs).unref();
      else reply();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    address = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('5xx, 429 and timeouts are retryable; other 4xx permanent', async () => {
    // A generous timeout for the answers (a loaded CI machine), a short one only for the slow case.
    const signer = createTransitSigner({ address, token: TOKEN, mount: 'transit', key: 'k', timeoutMs: 15_000 });
    const outcomes: Array<[string, boolean]> = [];
    for (const status of [503, 500, 429, 400]) {
      behaviour.status = status;
      const error = await failure(() => signer.sign(Buffer.from('x')));
      outcomes.push([errorCode(error), isRetryable(error)]);
      expect(error.message).not.toContain(TOKEN);
    }
    expect(outcomes).toEqual([
      ['VAULT_UNAVAILABLE', true],
      ['VAULT_UNAVAILABLE', true],
      ['VAULT_UNAVAILABLE', true],
      ['VAULT_REQUEST_FAILED', false],
    ]);
    behaviour.status = 200;
    behaviour.delayMs = 5_000;
    const slow = await failure(() => createTransitSigner({ address, token: TOKEN, mount: 'transit', key: 'k', timeoutMs: 300 }).rotate());
    expect([errorCode(slow), isRetryable(slow)]).toEqual(['VAULT_TIMEOUT', true]);
  });
});
