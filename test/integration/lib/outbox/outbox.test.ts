import { join } from 'node:path';
import { createPool, withTransaction, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createAvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { enqueueEvents } from '../../../../lib/outbox/outbox.ts';
import { createOutboxRelay } from '../../../../lib/outbox/relay.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, readRecords, testRuntimeDeps } from '../../../support/runtime.ts';
import { startFixture, waitForExit, waitForLine } from '../../../support/processes.ts';

describe('transactional outbox and relay', () => {
  const env = testEnv();
  const schema = uniqueName('outbox').replace(/-/g, '_');
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '' });
  let pool: Pool;

  beforeAll(async () => {
    const applied = await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    expect(applied.length).toBeGreaterThan(0);
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('writes nothing when the transaction rolls back', async () => {
    const topic = uniqueName('outbox-rollback');
    const cleanup = await createTestTopic(topic, 1);
    try {
      await expect(
        withTransaction(pool, async (client) => {
          await enqueueEvents(client, codec, [{ topic, key: 'agent-1', value: { id: 'e', seq: 1, kind: 'ok' } }]);
          throw new Error('the state change failed');
        }),
      ).rejects.toThrow('the state change failed');
      const { rows } = await pool.query('SELECT count(*)::int AS n FROM outbox WHERE topic = $1', [topic]);
      expect(rows[0]).toEqual({ n: 0 });
    } finally {
      await cleanup();
    }
  });

  it('loses nothing when the relay is killed between publishing and marking rows published', async () => {
    const topic = uniqueName('outbox-crash');
    const cleanup = await createTestTopic(topic, 3);
    try {
      const count = 60;
      const eventIds = await withTransaction(pool, (client) =>
        enqueueEvents(
          client,
          codec,
          Array.from({ length: count }, (_, i) => ({ topic, key: `agent-${i % 7}`, value: { id: `e-${i}`, seq: i, kind: 'ok' } })),
        ),
      );
      const relayEnv = { ...env, DB_SCHEMA: schema };

      const crashing = startFixture('outbox-relay.ts', { ...relayEnv, CRASH_AFTER_PUBLISH: 'true' });
      expect((await waitForExit(crashing)).signal).toBe('SIGKILL');
      const { rows: pending } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE topic = $1 AND published_at IS NULL', [topic]);
      expect(pending[0]?.n).toBe(count); // published once, never marked

      const relay = startFixture('outbox-relay.ts', relayEnv);
      await waitForLine(relay, 'ready');
      await eventually(async () => {
        const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE topic = $1 AND published_at IS NULL', [topic]);
        return rows[0]?.n === 0;
      }, 30_000, 'every outbox row published');
      relay.kill('SIGTERM');
      expect((await waitForExit(relay)).code).toBe(0);

      // The first round (20 rows) went out twice; every event is there at least once.
      const records = await readRecords(topic, count + 20, uniqueName('outbox-reader'));
      const seen = new Set(records.map((r) => r.headers['event-id']));
      expect(eventIds.every((id) => seen.has(id))).toBe(true);
      // Per key, the first delivery of each event keeps the table's order.
      const byKey = new Map<string, number[]>();
      for (const r of records) {
        const value = (await codec.decode(r.value ?? Buffer.alloc(0))) as { seq: number };
        const key = r.key?.toString() ?? '';
        const list = byKey.get(key) ?? [];
        if (!list.includes(value.seq)) list.push(value.seq);
        byKey.set(key, list);
      }
      for (const list of byKey.values()) expect(list).toEqual([...list].sort((a, b) => a - b));
    } finally {
      await cleanup();
    }
  });

  it('deletes published rows past their retention', async () => {
    const topic = uniqueName('outbox-prune');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('outbox-prune');
    await deps.producer.connect();
    const relay = createOutboxRelay({ pool, databaseUrl: env.DATABASE_URL ?? '', schema, producer: deps.producer, logger: deps.logger, metrics: deps.metrics, retainPublishedMs: 0 });
    try {
      await withTransaction(pool, (client) => enqueueEvents(client, codec, [1, 2, 3].map((seq) => ({ topic, key: 'agent-1', value: { id: `p-${seq}`, seq, kind: 'ok' } }))));
      await relay.start();
      await eventually(async () => {
        const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE topic = $1', [topic]);
        return rows[0]?.n === 0;
      }, 30_000, 'published rows pruned');
      expect(await readRecords(topic, 3, uniqueName('outbox-prune-reader'))).toHaveLength(3);
    } finally {
      await relay.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('keeps publishing after its database connection (and lock) is cut', async () => {
    const topic = uniqueName('outbox-reconnect');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('outbox-reconnect');
    await deps.producer.connect();
    const relay = createOutboxRelay({ pool, databaseUrl: env.DATABASE_URL ?? '', schema, producer: deps.producer, logger: deps.logger, metrics: deps.metrics, pollIntervalMs: 100 });
    const holder = async () =>
      (await pool.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = $1`, [`outbox-relay:${schema}`.slice(0, 63)])).rows[0]?.pid;
    try {
      await relay.start();
      await eventually(async () => (await holder()) !== undefined, 15_000, 'relay holding the lock');
      await pool.query('SELECT pg_terminate_backend($1)', [await holder()]);
      await withTransaction(pool, (client) => enqueueEvents(client, codec, [1, 2].map((seq) => ({ topic, key: 'agent-1', value: { id: `r-${seq}`, seq, kind: 'ok' } }))));
      expect(await readRecords(topic, 2, uniqueName('outbox-reconnect-reader'))).toHaveLength(2);
      await eventually(async () => (await holder()) !== undefined, 15_000, 'relay holding the lock again');
    } finally {
      await relay.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });
});
