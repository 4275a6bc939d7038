import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { insertAuditIndex, queryAuditIndex, recordArchiveFile, type AuditIndexEntry } from '../../../../lib/archive/index-store.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { errorCode } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

describe('audit index in Postgres', () => {
  const env = testEnv();
  const schema = uniqueName('audit_index').replace(/-/g, '_');
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  const base = Date.parse('2026-12-01T23:59:50.000Z');
  const agents = [randomUUID(), randomUUID()];
  const request = randomUUID();
  const entries: AuditIndexEntry[] = Array.from({ length: 25 }, (_, i) => ({
    eventId: randomUUID(),
    // Two events share each time: the event id breaks the tie.
    time: new Date(base + Math.floor(i / 2) * 1000),
    action: i % 3 === 0 ? 'request.rejected' : 'agent.state_changed',
    actor: i % 2 === 0 ? 'service:provisioner' : 'user:alice',
    agentId: i % 5 === 4 ? null : (agents[i % 2] ?? null),
    requestId: i < 4 ? request : null,
    traceId: i % 2 === 0 ? '0123456789abcdef0123456789abcdef' : null,
    partition: i % 3,
    offset: 100 + i,
    payloadHash: 'ab'.repeat(32),
  }));
  const ordered = [...entries].sort((a, b) => a.time.getTime() - b.time.getTime() || (a.eventId < b.eventId ? -1 : 1));

  it('inserts a batch in one statement, idempotently', async () => {
    expect(await insertAuditIndex(pool, entries.slice(0, 20))).toBe(20);
    // A redelivered batch overlapping the first, with a duplicate inside it: only the new ones count.
    const again = [...entries.slice(15), entries[24] as AuditIndexEntry];
    expect(await insertAuditIndex(pool, again)).toBe(5);
    expect(await insertAuditIndex(pool, [])).toBe(0);
    const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_index');
    expect(rows[0]?.n).toBe(25);
  });

  it('pages through everything in (time, event id) order with a cursor', async () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const page = await queryAuditIndex(pool, { limit: 7, ...(cursor !== undefined ? { cursor } : {}) });
      seen.push(...page.events.map((e) => e.eventId));
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    expect(seen).toEqual(ordered.map((e) => e.eventId));
  });

  it('filters by agent, request, action, actor and a time range', async () => {
    const ids = async (query: Parameters<typeof queryAuditIndex>[1]) => (await queryAuditIndex(pool, { limit: 1000, ...query })).events.map((e) => e.eventId);
    const expect_ = (filter: (e: AuditIndexEntry) => boolean) => ordered.filter(filter).map((e) => e.eventId);
    expect(await ids({ agentId: agents[0] })).toEqual(expect_((e) => e.agentId === agents[0]));
    expect(await ids({ requestId: request })).toEqual(expect_((e) => e.requestId === request));
    expect(await ids({ action: 'request.rejected', actor: 'user:alice' })).toEqual(expect_((e) => e.action === 'request.rejected' && e.actor === 'user:alice'));
    const from = new Date(base + 3000);
    const to = new Date(base + 8000);
    expect(await ids({ from, to })).toEqual(expect_((e) => e.time >= from && e.time < to));
    expect(await ids({ agentId: randomUUID() })).toEqual([]);
  });

  it('names the archive file of an event once its file is recorded', async () => {
    const first = entries[0] as AuditIndexEntry; // partition 0, offset 100
    const before = await queryAuditIndex(pool, { limit: 1000 });
    expect(before.events.every((e) => e.objectKey === null)).toBe(true);
    const key = 'audit-events/dt=2026-12-01/p=0/00000000000000000100-00000000000000000112.avro';
    const file = { objectKey: key, day: '2026-12-01', partition: 0, firstOffset: 100, lastOffset: 112, recordCount: 5, bytes: 1234, sha256: 'c2hh', versionId: 'v1' };
    await recordArchiveFile(pool, file);
    await recordArchiveFile(pool, file); // a retry: no-op
    const after = await queryAuditIndex(pool, { limit: 1000 });
    const archived = after.events.filter((e) => e.objectKey === key).map((e) => e.offset).sort((a, b) => a - b);
    expect(archived).toEqual([100, 103, 106, 109, 112]);
    expect(after.events.find((e) => e.eventId === first.eventId)).toMatchObject({ partition: 0, offset: 100, objectKey: key, payloadHash: 'ab'.repeat(32), traceId: first.traceId });
  });

  it('fills in the chain of a file recorded without one, and never changes a recorded chain', async () => {
    const key = 'audit-events/dt=2026-12-02/p=1/00000000000000000000-00000000000000000009.avro';
    const file = { objectKey: key, day: '2026-12-02', partition: 1, firstOffset: 0, lastOffset: 9, recordCount: 10, bytes: 99, sha256: 'c2hh', versionId: 'v1' };
    const chains = async () => (await pool.query<{ first_chain: string | null; last_chain: string | null }>('SELECT first_chain, last_chain FROM audit_files WHERE object_key = $1', [key])).rows;
    await recordArchiveFile(pool, file); // from before the chain
    expect(await chains()).toEqual([{ first_chain: null, last_chain: null }]);
    await recordArchiveFile(pool, { ...file, firstChain: 'a'.repeat(64), lastChain: 'b'.repeat(64) }); // a reindex restores it
    expect(await chains()).toEqual([{ first_chain: 'a'.repeat(64), last_chain: 'b'.repeat(64) }]);
    await recordArchiveFile(pool, { ...file, firstChain: 'c'.repeat(64), lastChain: 'd'.repeat(64) });
    await recordArchiveFile(pool, file);
    expect(await chains()).toEqual([{ first_chain: 'a'.repeat(64), last_chain: 'b'.repeat(64) }]);
  });

  it('refuses an invalid query as a permanent AUDIT_QUERY_INVALID', async () => {
    for (const query of [{ agentId: 'nope' }, { limit: 0 }, { limit: 1001 }, { cursor: 'garbage' }, { from: new Date('x') }]) {
      expect(errorCode(await queryAuditIndex(pool, query).catch((e: unknown) => e))).toBe('AUDIT_QUERY_INVALID');
    }
  });
});
