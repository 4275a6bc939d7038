import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import type { AgentHeartbeat } from '../../../../lib/contracts/types.ts';
import { encodeLastHeartbeat, heartbeatKeyPrefix, lastHeartbeatKey } from '../../../../lib/heartbeat/last-heartbeat.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { buildApi, DEFAULT_API_LIMITS, type ApiLimits, type IngestApi, type LastHeartbeatReader } from '../../../../services/ingest/api.ts';
import { loadIdentitiesConfig, parseIdentitiesConfig, type IdentitiesConfig } from '../../../../services/ingest/authz.ts';
import { agentIdFor } from '../../../../services/ingest/idempotency.ts';
import { heartbeatStore } from '../../../../services/ingest/main.ts';
import type { ProcessDeps } from '../../../../services/ingest/process-request.ts';
import { createTestPki, mtlsRequest, type KeyAndCert, type TestPki } from '../../../support/certs.ts';
import { eventually } from '../../../support/runtime.ts';
import { createIngestWorld, type IngestWorld } from './world.ts';

// The HTTPS API with mutual TLS, on a real Postgres schema and the schema registry (the outbox rows
// it writes are checked in the table; the Kafka path is kafka.test.ts).
jest.setTimeout(120_000);

interface ErrorBody {
  error: { code: string; message: string };
}

describe('ingest HTTPS API with mTLS', () => {
  let world: IngestWorld;
  let pool: Pool;
  let api: IngestApi;
  let port: number;
  let pki: TestPki;
  let deps: ProcessDeps;
  /** More servers on the same schema (other identities configurations, other limits); closed after. */
  const others: IngestApi[] = [];
  const serve = async (options: { authz?: IdentitiesConfig; limits?: ApiLimits; lastHeartbeat?: LastHeartbeatReader }) => {
    const other = buildApi({
      tls: { key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert },
      deps: { ...deps, authz: options.authz ?? deps.authz },
      logger: createLogger('ingest-api-test', 'silent'),
      limits: options.limits,
      lastHeartbeat: options.lastHeartbeat,
    });
    others.push(other);
    await other.listen({ port: 0, host: '127.0.0.1' });
    return (other.server.address() as AddressInfo).port;
  };
  /** What the server saw of refused TLS connections, and how many it let through to HTTP. */
  const tlsErrors: string[] = [];
  let secureConnections = 0;

  const call = (client: KeyAndCert | undefined, method: string, path: string, body?: unknown) => mtlsRequest(port, { method, path, ca: pki.ca.cert, client, body });
  const kernel = () => pki.clients.kernel;
  /** Topics of the outbox rows keyed by `agentId`, in order. */
  const outboxRows = async (agentId: string) => (await pool.query<{ topic: string }>('SELECT topic FROM outbox WHERE key = $1 ORDER BY id', [agentId])).rows.map((r) => r.topic);

  const instantiateBody = (key: string, extra: Record<string, unknown> = {}) => ({
    idempotencyKey: key,
    action: 'INSTANTIATE',
    spec: { image: 'ghcr.io/agent-manager/echo:1.2', environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }], resources: { cpuMillicores: 250, memoryMiB: 128 } },
    division: 'research',
    region: 'eu-west-1',
    labels: { team: 'nlp' },
    ...extra,
  });

  async function insertAgent(id: string, division: string, state: string, createdAt: string): Promise<void> {
    await pool.query(
      `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, created_at, updated_at)
       VALUES ($1, $2, '', $3, '{}', $4, 'eu-west-1', '{"team":"nlp"}', 2, $5, $5)`,
      [id, state, JSON.stringify({ template: 'echo', image: null, command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } }), division, createdAt],
    );
  }

  beforeAll(async () => {
    world = await createIngestWorld('it-ingest-api', { topics: false });
    pool = createPool({ connectionString: world.env.DATABASE_URL ?? '', schema: world.schema, max: 4 });
    pki = createTestPki();
    deps = { pool, codec: world.codec, topics: world.topics, authz: loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json')), rules: { knownTemplates: ['echo'] } };
    api = buildApi({ tls: { key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert }, deps, logger: createLogger('ingest-api-test', 'silent') });
    await api.listen({ port: 0, host: '127.0.0.1' });
    port = (api.server.address() as AddressInfo).port;
    api.server.on('tlsClientError', (error: Error) => tlsErrors.push(error.message));
    api.server.on('secureConnection', () => secureConnections++);
  });

  afterAll(async () => {
    for (const other of others) await other.close();
    await api?.close();
    await pool?.end();
    await world?.teardown();
  });

  describe('the TLS layer', () => {
    it('refuses a client whose certificate is signed by another CA during the handshake (no HTTP status)', async () => {
      tlsErrors.length = 0;
      const before = secureConnections;
      await expect(call(pki.clients.rogue, 'GET', '/v1/agents')).rejects.toThrow(/alert|certificate|ECONNRESET|socket hang up/i);
      // Node's TLS server drops the connection once the chain fails to verify: HTTP never sees it.
      await eventually(() => tlsErrors.length > 0, 5_000, 'the server to report the refused connection');
      expect(secureConnections).toBe(before);
    });

    it('refuses a client without a certificate', async () => {
      tlsErrors.length = 0;
      const before = secureConnections;
      await expect(call(undefined, 'GET', '/v1/agents')).rejects.toThrow(/alert|certificate|ECONNRESET|socket hang up/i);
      await eventually(() => tlsErrors.length > 0, 5_000, 'the server to report the refused handshake');
      expect(tlsErrors[0]).toMatch(/peer did not return a certificate/i);
      expect(secureConnections).toBe(before);
    });

    it('answers 403 to a client signed by the CA whose CN has no identity', async () => {
      const response = await call(pki.clients.stranger, 'POST', '/v1/requests', instantiateBody(`stranger-${randomUUID()}`));
      expect(response.status).toBe(403);
      expect((response.body as ErrorBody).error).toEqual({ code: 'UNKNOWN_IDENTITY', message: 'identity "stranger" (the client certificate\'s CN) is not configured' });
      expect((await call(pki.clients.stranger, 'GET', '/v1/agents')).status).toBe(403);
      expect(secureConnections).toBeGreaterThan(0);
    });
  });

  describe('POST /v1/requests', () => {
    const key = `api-${randomUUID()}`;
    let first: { requestId: string; agentId: string; commandId: string };

    it('accepts the Kernel\'s INSTANTIATE with 202, the requestId and the agentId derived from the key, and writes the request and its events', async () => {
      const response = await call(kernel(), 'POST', '/v1/requests', instantiateBody(key));
      expect(response.status).toBe(202);
      first = response.body as typeof first;
      expect(first).toMatchObject({ outcome: 'ACCEPTED', agentId: agentIdFor('kernel', key), replayed: false });
      expect(first.requestId).toMatch(/^[0-9a-f-]{36}$/);
      const { rows } = await pool.query('SELECT outcome, requested_by, command_id FROM requests WHERE idempotency_key = $1', [key]);
      expect(rows).toEqual([{ outcome: 'ACCEPTED', requested_by: 'kernel', command_id: first.commandId }]);
      expect(await outboxRows(first.agentId)).toEqual([world.topics['agent-status'], world.topics['agent-commands'], world.topics['audit-events']]);
    });

    it('answers a repeat (same key, same payload, new requestId) with the first outcome and writes nothing', async () => {
      const response = await call(kernel(), 'POST', '/v1/requests', { ...instantiateBody(key), requestId: randomUUID(), requestedBy: 'kernel' });
      expect(response).toMatchObject({ status: 202, body: { requestId: first.requestId, agentId: first.agentId, commandId: first.commandId, replayed: true } });
      expect((await pool.query('SELECT 1 FROM requests WHERE idempotency_key = $1', [key])).rowCount).toBe(1);
      expect(await outboxRows(first.agentId)).toHaveLength(3);
    });

    it('decides concurrent first deliveries of one key once (the others get the same outcome)', async () => {
      const racing = `race-${randomUUID()}`;
      const answers = await Promise.all(Array.from({ length: 8 }, () => call(kernel(), 'POST', '/v1/requests', instantiateBody(racing))));
      expect(answers.map((a) => a.status)).toEqual(Array.from({ length: 8 }, () => 202));
      const ids = new Set(answers.map((a) => (a.body as { requestId: string }).requestId));
      expect(ids.size).toBe(1);
      expect(answers.filter((a) => (a.body as { replayed: boolean }).replayed)).toHaveLength(7);
      expect((await pool.query('SELECT 1 FROM requests WHERE idempotency_key = $1', [racing])).rowCount).toBe(1);
      expect(await outboxRows(agentIdFor('kernel', racing))).toHaveLength(3);
    });

    it('refuses the same key with another payload: 409 IDEMPOTENCY_CONFLICT naming the key', async () => {
      const response = await call(kernel(), 'POST', '/v1/requests', instantiateBody(key, { labels: { team: 'other' } }));
      expect(response.status).toBe(409);
      const { error } = response.body as ErrorBody;
      expect(error.code).toBe('IDEMPOTENCY_CONFLICT');
      expect(error.message).toContain(`idempotency key "${key}" was already used by request ${first.requestId}`);
      // The original stays as it was.
      expect((await pool.query('SELECT request_id FROM requests WHERE idempotency_key = $1', [key])).rows).toEqual([{ request_id: first.requestId }]);
    });

    it('refuses an invalid request with 400 and the reason', async () => {
      const body = instantiateBody(`gpu-${randomUUID()}`);
      const response = await call(kernel(), 'POST', '/v1/requests', { ...body, spec: { ...body.spec, resources: { cpuMillicores: 250, memoryMiB: 128, gpuCount: 99, gpuType: 'nvidia-a100' } } });
      expect(response.status).toBe(400);
      expect((response.body as ErrorBody).error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining('spec.resources.gpuCount: must be at most 16 (got 99)') as unknown });
    });

    it('refuses a body that is not an AgentRequest, or not JSON, with 400', async () => {
      const missing = await call(kernel(), 'POST', '/v1/requests', { action: 'INSTANTIATE' });
      expect(missing.status).toBe(400);
      expect((missing.body as ErrorBody).error.message).toMatch(/idempotencyKey/);
      const broken = await call(kernel(), 'POST', '/v1/requests', '{"idempotencyKey": ');
      expect(broken.status).toBe(400);
      expect((broken.body as ErrorBody).error.code).toMatch(/JSON|BODY|FST_/);
    });

    it('refuses a requestedBy other than the certificate identity with 400', async () => {
      const response = await call(kernel(), 'POST', '/v1/requests', instantiateBody(`spoof-${randomUUID()}`, { requestedBy: 'research-bot' }));
      expect(response.status).toBe(400);
      expect((response.body as ErrorBody).error.code).toBe('REQUESTED_BY_MISMATCH');
    });

    it('refuses the viewer with 403 (reads only), and research-bot outside its division', async () => {
      const viewer = await call(pki.clients.viewer, 'POST', '/v1/requests', instantiateBody(`viewer-${randomUUID()}`));
      expect(viewer.status).toBe(403);
      expect((viewer.body as ErrorBody).error).toMatchObject({ code: 'UNAUTHORIZED', message: expect.stringContaining('identity "viewer" may not INSTANTIATE') as unknown });
      const bot = await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(`bot-${randomUUID()}`, { division: 'platform' }));
      expect(bot.status).toBe(403);
      const allowed = await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(`bot-${randomUUID()}`));
      expect(allowed.status).toBe(202);
    });

    it('answers 404 to an action on an unknown agent', async () => {
      const response = await call(kernel(), 'POST', '/v1/requests', { idempotencyKey: `stop-${randomUUID()}`, action: 'STOP', agentId: randomUUID(), division: 'research' });
      expect(response.status).toBe(404);
      expect((response.body as ErrorBody).error.code).toBe('UNKNOWN_AGENT');
    });

    it('GET /v1/requests/:id returns the stored request; 404 for an unknown one, 400 for a bad id', async () => {
      const response = await call(pki.clients.viewer, 'GET', `/v1/requests/${first.requestId}`);
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({ requestId: first.requestId, idempotencyKey: key, action: 'INSTANTIATE', agentId: first.agentId, division: 'research', requestedBy: 'kernel', outcome: 'ACCEPTED', code: null, commandId: first.commandId });
      const rejected = await pool.query<{ request_id: string }>("SELECT request_id FROM requests WHERE outcome = 'REJECTED' AND requested_by = 'viewer' LIMIT 1");
      const rejection = await call(kernel(), 'GET', `/v1/requests/${rejected.rows[0]?.request_id ?? ''}`);
      expect(rejection.body).toMatchObject({ outcome: 'REJECTED', code: 'UNAUTHORIZED', reason: expect.stringContaining('may not INSTANTIATE') as unknown });
      expect((await call(kernel(), 'GET', `/v1/requests/${randomUUID()}`)).status).toBe(404);
      expect((await call(kernel(), 'GET', '/v1/requests/nope')).status).toBe(400);
    });
  });

  describe('idempotency keys belong to the identity that sends them', () => {
    it('makes the same key from two identities two independent requests and agents, and shows neither the other\'s requestId', async () => {
      const key = `shared-${randomUUID()}`;
      const byKernel = await call(kernel(), 'POST', '/v1/requests', instantiateBody(key));
      expect(byKernel.status).toBe(202);
      const kernelAnswer = byKernel.body as { requestId: string; agentId: string };
      expect(kernelAnswer.agentId).toBe(agentIdFor('kernel', key));
      // Another payload under the same key: not a conflict with the Kernel's request, a request of its own.
      const byBot = await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(key, { labels: { team: 'bots' } }));
      expect(byBot).toMatchObject({ status: 202, body: { outcome: 'ACCEPTED', replayed: false, agentId: agentIdFor('research-bot', key) } });
      const botAnswer = byBot.body as { requestId: string; agentId: string };
      expect(botAnswer.requestId).not.toBe(kernelAnswer.requestId);
      expect(botAnswer.agentId).not.toBe(kernelAnswer.agentId);
      expect(JSON.stringify(byBot.body)).not.toContain(kernelAnswer.requestId);
      // Each identity's repeat gets its own outcome.
      expect((await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(key, { labels: { team: 'bots' } }))).body).toMatchObject({ requestId: botAnswer.requestId, replayed: true });
      expect((await call(kernel(), 'POST', '/v1/requests', instantiateBody(key))).body).toMatchObject({ requestId: kernelAnswer.requestId, replayed: true });
      const { rows } = await pool.query('SELECT requested_by, agent_id FROM requests WHERE idempotency_key = $1 ORDER BY requested_by', [key]);
      expect(rows).toEqual([
        { requested_by: 'kernel', agent_id: kernelAnswer.agentId },
        { requested_by: 'research-bot', agent_id: botAnswer.agentId },
      ]);
      expect(await outboxRows(botAnswer.agentId)).toEqual([world.topics['agent-status'], world.topics['agent-commands'], world.topics['audit-events']]);
    });

    it('does not name another identity\'s idempotency key when a requestId is reused', async () => {
      const key = `reused-id-${randomUUID()}`;
      const byKernel = (await call(kernel(), 'POST', '/v1/requests', instantiateBody(key))).body as { requestId: string };
      const reused = await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(`bot-${randomUUID()}`, { requestId: byKernel.requestId }));
      expect(reused.status).toBe(409);
      expect((reused.body as ErrorBody).error.code).toBe('DUPLICATE_REQUEST_ID');
      expect(JSON.stringify(reused.body)).not.toContain(key);
    });

    it('authorizes a repeat again: once research-bot\'s roles are revoked, its repeat is refused without the stored outcome', async () => {
      const key = `revoked-${randomUUID()}`;
      const first = await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(key));
      expect(first.status).toBe(202);
      const stored = first.body as { requestId: string; agentId: string; commandId: string };
      // The same identities file with research-bot reduced to reading: a restarted ingest's view.
      const document = JSON.parse(readFileSync(join(process.cwd(), 'config', 'identities.json'), 'utf8')) as { identities: Record<string, { roles: string[] }> };
      document.identities['research-bot'] = { roles: ['viewer'] };
      const revokedPort = await serve({ authz: parseIdentitiesConfig(document, 'revoked') });
      const repeat = await mtlsRequest(revokedPort, { method: 'POST', path: '/v1/requests', ca: pki.ca.cert, client: pki.clients.researchBot, body: instantiateBody(key) });
      expect(repeat.status).toBe(403);
      expect((repeat.body as ErrorBody).error).toMatchObject({ code: 'UNAUTHORIZED', replayed: false, message: expect.stringContaining('identity "research-bot" may not INSTANTIATE') as unknown });
      for (const id of [stored.requestId, stored.commandId]) expect(JSON.stringify(repeat.body)).not.toContain(id);
      // The conflict path is refused the same way (it would name the stored request).
      const conflicting = await mtlsRequest(revokedPort, { method: 'POST', path: '/v1/requests', ca: pki.ca.cert, client: pki.clients.researchBot, body: instantiateBody(key, { labels: { team: 'other' } }) });
      expect(conflicting.status).toBe(403);
      expect(JSON.stringify(conflicting.body)).not.toContain(stored.requestId);
      // Nothing stored changed; with its roles the identity still gets its outcome.
      expect((await pool.query('SELECT request_id FROM requests WHERE idempotency_key = $1', [key])).rows).toEqual([{ request_id: stored.requestId }]);
      expect((await call(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(key))).body).toMatchObject({ requestId: stored.requestId, replayed: true });
    });
  });

  describe('limits', () => {
    const limits: ApiLimits = { ...DEFAULT_API_LIMITS, bodyLimitBytes: 2048, rateLimitMax: 3, rateLimitWindowMs: 60_000 };
    let limitedPort: number;
    const limited = (client: KeyAndCert, method: string, path: string, body?: unknown) => mtlsRequest(limitedPort, { method, path, ca: pki.ca.cert, client, body });

    beforeAll(async () => {
      limitedPort = await serve({ limits });
    });

    it('refuses a body over the limit with 413 in the API\'s error shape', async () => {
      const response = await limited(pki.clients.researchBot, 'POST', '/v1/requests', instantiateBody(`big-${randomUUID()}`, { labels: { filler: 'x'.repeat(4096) } }));
      expect(response.status).toBe(413);
      expect(response.body).toEqual({ error: { code: 'BODY_TOO_LARGE', message: 'the request body is larger than 2048 bytes' } });
    });

    it('answers 429 with Retry-After once one identity is over its rate, while another identity still passes', async () => {
      for (let i = 0; i < limits.rateLimitMax; i++) expect((await limited(kernel(), 'GET', '/v1/agents?limit=1')).status).toBe(200);
      const refused = await limited(kernel(), 'GET', '/v1/agents?limit=1');
      expect(refused.status).toBe(429);
      expect((refused.body as ErrorBody).error).toEqual({ code: 'RATE_LIMITED', message: expect.stringMatching(/^identity "kernel" made more than 3 requests in 60000 ms; retry in /) as unknown });
      expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
      expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(60);
      // A POST by the same identity is refused too (before its body is even read).
      expect((await limited(kernel(), 'POST', '/v1/requests', instantiateBody(`limited-${randomUUID()}`))).status).toBe(429);
      expect((await limited(pki.clients.viewer, 'GET', '/v1/agents?limit=1')).status).toBe(200);
      // The limit is per server process: the other server still serves the Kernel.
      expect((await call(kernel(), 'GET', '/v1/agents?limit=1')).status).toBe(200);
    });
  });

  describe('the last heartbeat on GET /v1/agents/:id', () => {
    const agentId = randomUUID();
    const silentId = randomUUID();
    let redis: Redis;
    /** The heartbeat service's Redis as ingest reads it (the real client of services/ingest/main.ts). */
    let store: ReturnType<typeof heartbeatStore>;
    let heartbeatPort: number;
    const heartbeatKeys = () => [lastHeartbeatKey(heartbeatKeyPrefix(world.prefix), agentId)];
    const closers: Array<() => Promise<void>> = [];

    beforeAll(async () => {
      await insertAgent(agentId, 'research', 'RUNNING', '2025-02-01T00:00:00.000001Z');
      await insertAgent(silentId, 'research', 'RUNNING', '2025-02-01T00:00:00.000002Z');
      redis = new Redis(world.env.REDIS_URL ?? '');
      store = heartbeatStore(world.env.REDIS_URL ?? '', world.prefix, 500, createLogger('ingest-api-test', 'silent'));
      closers.push(store.close);
      heartbeatPort = await serve({ lastHeartbeat: store.read });
      await eventually(async () => (await store.read(silentId).then(() => true, () => false)), 10_000, 'the API\'s Redis client to connect');
    });

    afterAll(async () => {
      await redis?.del(...heartbeatKeys());
      await redis?.quit();
      for (const close of closers) await close();
    });

    const getAgent = (port: number, id: string) => mtlsRequest(port, { method: 'GET', path: `/v1/agents/${id}`, ca: pki.ca.cert, client: kernel() });

    it('includes the heartbeat the heartbeat service stored (time, sequence, instance, cpu, memory, gauges); null when none is', async () => {
      const sentAt = new Date('2026-12-01T03:00:00.123Z');
      const heartbeat: AgentHeartbeat = { agentId, instanceId: 'host-a:4242', pid: 4242, sequence: 17, sentAt, intervalMs: 2_000, stopping: false, metrics: { cpuPercent: 1.25, memoryRssBytes: 52_428_800, custom: { queueDepth: 3 } } };
      // Written as the heartbeat service writes it (its own encoder and key).
      await redis.set(lastHeartbeatKey(heartbeatKeyPrefix(world.prefix), agentId), encodeLastHeartbeat(heartbeat, sentAt.getTime() + 40, 2_000));
      const response = await getAgent(heartbeatPort, agentId);
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({
        agentId,
        state: 'RUNNING',
        lastHeartbeat: {
          sentAt: '2026-12-01T03:00:00.123Z',
          receivedAt: '2026-12-01T03:00:00.163Z',
          sequence: 17,
          instance: 'host-a:4242',
          pid: 4242,
          intervalMs: 2000,
          cpuPercent: 1.25,
          memoryRssBytes: 52_428_800,
          gauges: { queueDepth: 3 },
        },
        lastHeartbeatError: null,
      });
      const silent = await getAgent(heartbeatPort, silentId);
      expect(silent.status).toBe(200);
      expect(silent.body).toMatchObject({ agentId: silentId, lastHeartbeat: null, lastHeartbeatError: null });
    });

    it('answers the agent without its heartbeat, at once, when Redis is unreachable or does not answer', async () => {
      // Nothing listens on a port just released; a server that accepts and never answers hangs.
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
      const closedPort = (closed.address() as AddressInfo).port;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      const sockets: Socket[] = [];
      const silentRedis: Server = createServer((socket) => void sockets.push(socket));
      await new Promise<void>((resolve) => silentRedis.listen(0, '127.0.0.1', resolve));
      closers.push(async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise<void>((resolve) => silentRedis.close(() => resolve()));
      });
      for (const url of [`redis://127.0.0.1:${closedPort}`, `redis://127.0.0.1:${(silentRedis.address() as AddressInfo).port}`]) {
        const down = heartbeatStore(url, world.prefix, 300, createLogger('ingest-api-test', 'silent'));
        closers.push(down.close);
        const port = await serve({ lastHeartbeat: down.read });
        const started = Date.now();
        const response = await getAgent(port, agentId);
        expect(Date.now() - started).toBeLessThan(2_000);
        expect(response.status).toBe(200);
        const body = response.body as { agentId: string; state: string; lastHeartbeat: unknown; lastHeartbeatError: { code: string; message: string } };
        expect(body).toMatchObject({ agentId, state: 'RUNNING', lastHeartbeat: null });
        expect(body.lastHeartbeatError.code).toBe('HEARTBEAT_UNAVAILABLE');
        expect(body.lastHeartbeatError.message).toMatch(/last heartbeat could not be read/);
      }
    });
  });

  describe('reading agents', () => {
    const runningId = randomUUID();
    const platformId = randomUUID();

    beforeAll(async () => {
      await insertAgent(runningId, 'research', 'RUNNING', '2025-01-01T00:00:00.000001Z');
      await insertAgent(platformId, 'platform', 'STOPPED', '2025-01-01T00:00:00.000002Z');
    });

    it('GET /v1/agents/:id returns an agent row; 404 when unknown; the viewer may read', async () => {
      const response = await call(pki.clients.viewer, 'GET', `/v1/agents/${runningId}`);
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({
        agentId: runningId,
        state: 'RUNNING',
        division: 'research',
        region: 'eu-west-1',
        labels: { team: 'nlp' },
        version: 2,
        spec: { template: 'echo' },
        createdAt: '2025-01-01T00:00:00.000Z',
      });
      const unknown = await call(kernel(), 'GET', `/v1/agents/${randomUUID()}`);
      expect(unknown.status).toBe(404);
      expect((unknown.body as ErrorBody).error.code).toBe('AGENT_NOT_FOUND');
      expect((await call(kernel(), 'GET', '/v1/agents/not-a-uuid')).status).toBe(400);
    });

    it('keeps research-bot to its division', async () => {
      expect((await call(pki.clients.researchBot, 'GET', `/v1/agents/${runningId}`)).status).toBe(200);
      expect((await call(pki.clients.researchBot, 'GET', `/v1/agents/${platformId}`)).status).toBe(404);
      expect((await call(pki.clients.researchBot, 'GET', '/v1/agents?division=platform')).status).toBe(403);
      const list = await call(pki.clients.researchBot, 'GET', '/v1/agents?limit=500');
      expect((list.body as { items: Array<{ division: string }> }).items.every((a) => a.division === 'research')).toBe(true);
    });

    it('paginates GET /v1/agents with an opaque cursor, in (createdAt, agentId) order, with state and division filters', async () => {
      // Seven agents of one division; three share a created_at (the id breaks the tie).
      const ids = Array.from({ length: 7 }, () => randomUUID());
      const times = ['2025-03-01T00:00:00.000001Z', '2025-03-01T00:00:00.000002Z', '2025-03-01T00:00:00.000002Z', '2025-03-01T00:00:00.000002Z', '2025-03-01T00:00:01Z', '2025-03-02T00:00:00Z', '2025-03-03T00:00:00Z'];
      for (const [i, id] of ids.entries()) await insertAgent(id, 'paging', i % 2 === 0 ? 'RUNNING' : 'STOPPED', times[i] ?? '');
      const expected = ids.map((id, i) => ({ id, time: times[i] ?? '' })).sort((a, b) => (a.time === b.time ? (a.id < b.id ? -1 : 1) : a.time < b.time ? -1 : 1)).map((x) => x.id);

      const seen: string[] = [];
      const pages: number[] = [];
      let cursor: string | null = null;
      do {
        const path: string = `/v1/agents?division=paging&limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
        const response = await call(pki.clients.viewer, 'GET', path);
        expect(response.status).toBe(200);
        const page = response.body as { items: Array<{ agentId: string }>; nextCursor: string | null };
        pages.push(page.items.length);
        seen.push(...page.items.map((a) => a.agentId));
        cursor = page.nextCursor;
      } while (cursor !== null && pages.length < 10);
      expect(pages).toEqual([3, 3, 1]);
      expect(seen).toEqual(expected);

      const running = await call(kernel(), 'GET', '/v1/agents?division=paging&state=RUNNING&limit=2');
      const firstPage = running.body as { items: Array<{ agentId: string; state: string }>; nextCursor: string };
      expect(firstPage.items.map((a) => a.state)).toEqual(['RUNNING', 'RUNNING']);
      const rest = await call(kernel(), 'GET', `/v1/agents?division=paging&state=RUNNING&limit=2&cursor=${encodeURIComponent(firstPage.nextCursor)}`);
      expect((rest.body as { items: unknown[]; nextCursor: string | null }).items).toHaveLength(2);
      expect((rest.body as { nextCursor: string | null }).nextCursor).toBeNull();

      const defaults = await call(kernel(), 'GET', '/v1/agents');
      expect((defaults.body as { items: unknown[] }).items.length).toBeGreaterThanOrEqual(9);
      expect((await call(kernel(), 'GET', '/v1/agents?limit=501')).status).toBe(400);
      expect((await call(kernel(), 'GET', '/v1/agents?cursor=garbage')).body).toMatchObject({ error: { code: 'INVALID_CURSOR' } });
      expect((await call(kernel(), 'GET', '/v1/agents?state=ASLEEP')).status).toBe(400);
    });

    it('answers unknown routes with 404 in the same error shape', async () => {
      expect(await call(kernel(), 'GET', '/v2/agents')).toMatchObject({ status: 404, body: { error: { code: 'NOT_FOUND' } } });
    });
  });
});
