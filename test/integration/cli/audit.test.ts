import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { buildAuditEvent } from '../../../lib/audit.ts';
import { initArchiveBucket } from '../../../lib/archive/bucket.ts';
import { insertAuditIndex, queryAuditIndex, type AuditPage } from '../../../lib/archive/index-store.ts';
import { topicContract } from '../../../lib/contracts/schemas.ts';
import { PartitionArchiver, type ArchiverRecord } from '../../../services/archiver/partition.ts';
import { archiveStore } from '../../../services/archiver/store.ts';
import { removeTestBucket, testS3Client } from '../../support/s3.ts';
import { createPool, type Pool } from '../../../lib/db/pool.ts';
import { migrateUp } from '../../../lib/db/migrate.ts';
import { createLogger } from '../../../lib/logger.ts';
import { testEnv, uniqueName } from '../../support/stack.ts';
import { runCli } from '../../support/cli.ts';

const cli = runCli;

describe('agent-manager audit query (the CLI)', () => {
  const env = testEnv();
  const schema = uniqueName('auditcli').replace(/-/g, '_');
  const cliEnv = { ...env, DATABASE_SCHEMA: schema, LOG_LEVEL: 'warn' };
  const agentId = randomUUID();
  const eventIds = Array.from({ length: 5 }, () => randomUUID());
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
    await insertAuditIndex(
      pool,
      eventIds.map((eventId, i) => ({
        eventId,
        time: new Date(Date.parse('2026-12-01T10:00:00Z') + i * 60_000),
        action: i === 4 ? 'request.rejected' : 'agent.state_changed',
        actor: 'service:provisioner',
        agentId: i === 4 ? null : agentId,
        requestId: null,
        traceId: null,
        partition: 2,
        offset: 40 + i,
        payloadHash: '00'.repeat(32),
      })),
    );
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('prints a table of the matching events and the cursor of the next page', async () => {
    const first = await cli(['audit', 'query', '--agent', agentId, '--limit', '3'], cliEnv);
    expect(first.code).toBe(0);
    const lines = first.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^TIME\s+ACTION\s+ACTOR\s+AGENT\s+REQUEST\s+EVENT\s+PARTITION\/OFFSET\s+ARCHIVED$/);
    expect(lines.slice(1, 4).map((l) => l.split(/\s+/)[5])).toEqual(eventIds.slice(0, 3));
    expect(lines[1]).toMatch(/^2026-12-01T10:00:00.000Z\s+agent.state_changed\s+service:provisioner\s+\S+\s+-\s+\S+\s+2\/40\s+pending$/);
    const cursor = /^more: --cursor (\S+)$/.exec(lines.at(-1) ?? '')?.[1];
    expect(cursor).toBeDefined();

    const second = await cli(['audit', 'query', '--agent', agentId, '--limit', '3', '--cursor', cursor ?? '', '--json'], cliEnv);
    expect(second.code).toBe(0);
    const page = JSON.parse(second.stdout) as AuditPage;
    expect(page.events.map((e) => e.eventId)).toEqual(eventIds.slice(3, 4));
    expect(page.nextCursor).toBeNull();
  });

  it('filters by action and time', async () => {
    const run = await cli(['audit', 'query', '--action', 'request.rejected', '--from', '2026-12-01', '--to', '2026-12-02', '--json'], cliEnv);
    expect(run.code).toBe(0);
    expect((JSON.parse(run.stdout) as AuditPage).events.map((e) => e.eventId)).toEqual([eventIds[4]]);
  });

  it('exits 2 on a usage mistake', async () => {
    for (const args of [['--agent', 'not-a-uuid'], ['--from', 'yesterday'], ['--limit', '0'], ['--cursor', 'nope']]) {
      const run = await cli(['audit', 'query', ...args], cliEnv);
      expect(run.code).toBe(2);
      expect(run.stderr).toMatch(/error: /);
    }
  });
});

describe('agent-manager audit reindex and show (the CLI)', () => {
  const env = testEnv();
  const s3 = testS3Client();
  const bucket = uniqueName('auditcli-archive');
  const prefix = 'audit-events';
  const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
  const source = uniqueName('auditcli_src').replace(/-/g, '_');
  const rebuilt = uniqueName('auditcli_dr').replace(/-/g, '_');
  const pools = new Map<string, Pool>();
  const start = Date.parse('2026-11-10T23:58:00.000Z');

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    for (const schema of [source, rebuilt]) {
      await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
      pools.set(schema, createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 }));
    }
  });

  afterAll(async () => {
    await removeTestBucket(s3, bucket);
    s3.destroy();
    for (const [schema, pool] of pools) {
      await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await pool.end();
    }
  });

  it('rebuilds the index from S3 alone, equal to the original, and shows an event from its file', async () => {
    const db = pools.get(source) as Pool;
    // Two partitions archived across midnight, indexed as the archiver does (index rows, then files).
    for (const partition of [0, 1]) {
      const events = Array.from({ length: 60 }, (_, i) =>
        buildAuditEvent({ actor: 'service:test', action: i % 2 === 0 ? 'a.b' : 'c.d', agentId: null, requestId: null, traceId: null, payload: { partition, i }, time: new Date(start + i * 4_000) }),
      );
      const records: ArchiverRecord[] = events.map((event, i) => {
        const body = contract.toBuffer(event);
        const value = Buffer.alloc(5 + body.length);
        value.writeUInt32BE(1, 1);
        body.copy(value, 5);
        return { offset: i, timestamp: start + i * 4_000 + 3, key: Buffer.from(event.eventId), headers: [{ key: 'event-id', value: Buffer.from(event.eventId) }], value };
      });
      await insertAuditIndex(db, events.map((e, i) => ({ eventId: e.eventId, time: e.time, action: e.action, actor: e.actor, agentId: null, requestId: null, traceId: null, partition, offset: i, payloadHash: e.hash })));
      const store = archiveStore({ s3, bucket, db, registryUrl: 'http://unused', partitionCount: 2 }, () => Promise.resolve(contract.schemaText));
      const archiver = new PartitionArchiver({ topic: 'audit-events', partition, prefix, limits: { flushIntervalMs: 60_000, maxRecords: 1_000, maxBytes: 1 << 20, windowGraceMs: 0 }, dayGraceMs: 0 }, store, { nextOffset: 0, lastFileDay: undefined, openDay: undefined });
      await archiver.add(records);
      await archiver.tick(start + 86_400_000 * 2, true);
    }

    const cliEnv = { ...env, DATABASE_SCHEMA: rebuilt, ARCHIVE_BUCKET: bucket, ARCHIVE_PREFIX: prefix, LOG_LEVEL: 'warn' };
    const run = await cli(['audit', 'reindex', '--from', '2026-11-10', '--to', '2026-11-11'], cliEnv);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout.trim().split('\n').at(-1)).toMatch(/^reindexed 2 days, \d+ files, 120 records: 120 new index rows$/);
    // Again: idempotent.
    const again = await cli(['audit', 'reindex', '--from', '2026-11-10', '--to', '2026-11-11', '--quiet'], cliEnv);
    expect(again.stdout.trim()).toMatch(/120 records: 0 new index rows$/);

    const all = async (schema: string) => (await queryAuditIndex(pools.get(schema) as Pool, { limit: 1000 })).events;
    expect(await all(rebuilt)).toEqual(await all(source));

    const some = (await all(rebuilt))[7];
    const show = await cli(['audit', 'show', some?.eventId ?? ''], cliEnv);
    expect(show.code).toBe(0);
    const shown = JSON.parse(show.stdout) as { archived: boolean; object: string; offset: number; key: string; headers: { key: string; value: string }[]; event: { eventId: string; hash: string } };
    expect(shown).toMatchObject({ archived: true, object: some?.objectKey, offset: some?.offset, key: some?.eventId, event: { eventId: some?.eventId, hash: some?.payloadHash } });
    expect(shown.headers).toEqual([{ key: 'event-id', value: some?.eventId }]);
  });
});
