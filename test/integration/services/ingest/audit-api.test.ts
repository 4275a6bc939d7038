import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { insertAuditIndex, type AuditIndexEntry } from '../../../../lib/archive/index-store.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { buildApi, type IngestApi } from '../../../../services/ingest/api.ts';
import { loadIdentitiesConfig } from '../../../../services/ingest/authz.ts';
import { createTestPki, mtlsRequest, type KeyAndCert, type TestPki } from '../../../support/certs.ts';
import { createIngestWorld, type IngestWorld } from './world.ts';

// GET /v1/audit over mutual TLS, on a real Postgres schema holding audit_index rows written by the
// archiver's own insert (the archiver itself is tested in test/integration/services/archiver).
jest.setTimeout(120_000);

interface ErrorBody {
  error: { code: string; message: string };
}

interface AuditEventJson {
  eventId: string;
  time: string;
  action: string;
  actor: string;
  agentId: string | null;
  requestId: string | null;
  partition: number;
  offset: number;
  objectKey: string | null;
}

interface AuditPageJson {
  items: AuditEventJson[];
  nextCursor: string | null;
}

describe('ingest HTTPS API: GET /v1/audit', () => {
  let world: IngestWorld;
  let pool: Pool;
  let api: IngestApi;
  let port: number;
  let pki: TestPki;
  const agentId = randomUUID();
  const requestId = randomUUID();
  const base = Date.parse('2026-11-30T10:00:00.000Z');
  /** 7 events of one agent (one per second), 3 of another, in time order. */
  const entries: AuditIndexEntry[] = Array.from({ length: 10 }, (_, i) => ({
    eventId: randomUUID(),
    time: new Date(base + i * 1000),
    action: i % 2 === 0 ? 'AGENT_STATE_CHANGED' : 'REQUEST_ACCEPTED',
    actor: i < 7 ? 'kernel' : 'provisioner',
    agentId: i < 7 ? agentId : randomUUID(),
    requestId: i === 3 ? requestId : null,
    traceId: null,
    partition: i % 2,
    offset: i,
    payloadHash: 'ab'.repeat(32),
  }));

  const call = (client: KeyAndCert, path: string) => mtlsRequest(port, { method: 'GET', path, ca: pki.ca.cert, client });

  beforeAll(async () => {
    world = await createIngestWorld('it-ingest-audit-api', { topics: false });
    pool = createPool({ connectionString: world.env.DATABASE_URL ?? '', schema: world.schema, max: 4 });
    pki = createTestPki();
    const authz = loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json'));
    api = buildApi({
      tls: { key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert },
      deps: { pool, codec: world.codec, topics: world.topics, authz, rules: { knownTemplates: ['echo'] } },
      logger: createLogger('ingest-audit-api-test', 'silent'),
    });
    await api.listen({ port: 0, host: '127.0.0.1' });
    port = (api.server.address() as AddressInfo).port;
    expect(await insertAuditIndex(pool, entries)).toBe(entries.length);
  });

  afterAll(async () => {
    await api?.close();
    await pool?.end();
    await world?.teardown();
  });

  it('gives an identity with auditRead (the kernel, operator role) the events of an agent in time order, page by page with nextCursor', async () => {
    const seen: AuditEventJson[] = [];
    let path = `/v1/audit?agentId=${agentId}&limit=3`;
    const cursors: Array<string | null> = [];
    for (;;) {
      const response = await call(pki.clients.kernel, path);
      expect(response.status).toBe(200);
      const page = response.body as AuditPageJson;
      expect(page.items.length).toBeLessThanOrEqual(3);
      seen.push(...page.items);
      cursors.push(page.nextCursor);
      if (page.nextCursor === null) break;
      path = `/v1/audit?agentId=${agentId}&limit=3&cursor=${encodeURIComponent(page.nextCursor)}`;
    }
    expect(cursors).toHaveLength(3);
    expect(seen.map((e) => e.eventId)).toEqual(entries.slice(0, 7).map((e) => e.eventId));
    expect(seen[0]).toEqual({
      eventId: entries[0]?.eventId,
      time: '2026-11-30T10:00:00.000Z',
      action: 'AGENT_STATE_CHANGED',
      actor: 'kernel',
      agentId,
      requestId: null,
      traceId: null,
      partition: 0,
      offset: 0,
      payloadHash: 'ab'.repeat(32),
      objectKey: null,
    });
  });

  it('combines filters: request, action, actor, and a [from, to) window (a bare day is its midnight UTC)', async () => {
    const byRequest = (await call(pki.clients.kernel, `/v1/audit?requestId=${requestId}`)).body as AuditPageJson;
    expect(byRequest.items.map((e) => e.eventId)).toEqual([entries[3]?.eventId]);
    const window = (await call(pki.clients.kernel, `/v1/audit?actor=provisioner&action=REQUEST_ACCEPTED&from=2026-11-30T10:00:07Z&to=2026-11-30T10:00:10Z`)).body as AuditPageJson;
    expect(window.items.map((e) => e.offset)).toEqual([7, 9]);
    const day = (await call(pki.clients.kernel, '/v1/audit?from=2026-11-30&to=2026-12-01&limit=1000')).body as AuditPageJson;
    expect(day.items).toHaveLength(10);
    expect(day.nextCursor).toBeNull();
    const before = (await call(pki.clients.kernel, '/v1/audit?to=2026-11-30')).body as AuditPageJson;
    expect(before).toEqual({ items: [], nextCursor: null });
  });

  it('answers 403 to an identity without auditRead (viewer reads agents, not the audit trail), and to an unknown one', async () => {
    const viewer = await call(pki.clients.viewer, '/v1/audit');
    expect(viewer.status).toBe(403);
    expect((viewer.body as ErrorBody).error).toEqual({ code: 'UNAUTHORIZED', message: 'identity "viewer" may not read the audit trail (it needs a role with auditRead)' });
    // The viewer still reads agents: the refusal is about the audit role only.
    expect((await call(pki.clients.viewer, '/v1/agents')).status).toBe(200);
    expect((await call(pki.clients.stranger, '/v1/audit')).status).toBe(403);
  });

  it.each([
    ['agentId=not-a-uuid', 'INVALID_QUERY', /agentId: must be a uuid/],
    ['requestId=123', 'INVALID_QUERY', /requestId: must be a uuid/],
    ['from=yesterday', 'INVALID_QUERY', /from: "yesterday" is not a time/],
    ['to=2026-13-45', 'INVALID_QUERY', /to: "2026-13-45" is not a time/],
    ['from=2026-12-01&to=2026-11-30', 'INVALID_QUERY', /from \(2026-12-01T00:00:00.000Z\) must be before to/],
    ['limit=0', 'INVALID_QUERY', /limit: must be at least 1/],
    ['limit=1001', 'INVALID_QUERY', /limit: must be at most 1000/],
    ['limit=2.5', 'INVALID_QUERY', /limit: must be a whole number/],
    ['division=research', 'INVALID_QUERY', /division/],
    ['cursor=garbage', 'INVALID_CURSOR', /cursor is not one this API returned/],
  ])('answers 400 to %s', async (query, code, message) => {
    const response = await call(pki.clients.kernel, `/v1/audit?${query}`);
    expect(response.status).toBe(400);
    const { error } = response.body as ErrorBody;
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
  });
});
