import { join } from 'node:path';
import { createPool, withTransaction, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createAvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { enqueueEvents } from '../../../../lib/outbox/outbox.ts';
import { createOutboxRelay, type OutboxRelay } from '../../../../lib/outbox/relay.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, readRecords, testRuntimeDeps } from '../../../support/runtime.ts';

jest.setTimeout(90_000);

/**
 * The relay's rounds run on the connection that holds its lock. What is guaranteed when that
 * connection is cut in the middle of a round (after the send, before the mark): the old session
 * marks nothing, a new holder (another relay, or the same one's next session) publishes the
 * unmarked round again and marks it; so that one round is delivered twice (at-least-once, consumers
 * de-duplicate by event-id), and nothing else is.
 */
describe('outbox relay: losing the lock mid-round', () => {
  const env = testEnv();
  const schema = uniqueName('relayfence').replace(/-/g, '_');
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '' });
  const appName = `outbox-relay:${schema}`.slice(0, 63);
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  const unmarked = async (topic: string) => (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE topic = $1 AND published_at IS NULL', [topic])).rows[0]?.n;

  it('a relay whose session is terminated after publishing marks nothing; the next holder publishes that round again and marks it', async () => {
    const topic = uniqueName('relay-fence');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('relay-fence');
    await deps.producer.connect();
    const rounds: { relay: string; ids: readonly string[]; at: Date }[] = [];
    let terminated = false;
    const relays: OutboxRelay[] = [];
    const relayNamed = (name: string) =>
      createOutboxRelay({
        pool,
        databaseUrl: env.DATABASE_URL ?? '',
        schema,
        producer: deps.producer,
        logger: deps.logger,
        metrics: deps.metrics,
        pollIntervalMs: 100,
        afterPublish: async (ids) => {
          const at = (await pool.query<{ now: Date }>('SELECT clock_timestamp() AS now')).rows[0]?.now ?? new Date();
          rounds.push({ relay: name, ids, at });
          if (terminated) return;
          terminated = true;
          // Cut the lock holder's session between its send and its mark (57P01, as in a server restart).
          const { rows } = await pool.query<{ n: number }>('SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1', [appName]);
          expect(rows[0]?.n).toBeGreaterThan(0);
          await new Promise((r) => setTimeout(r, 300));
        },
      });
    try {
      // Two relays: one holds the lock, the other stands by.
      relays.push(relayNamed('a'), relayNamed('b'));
      for (const relay of relays) await relay.start();
      await eventually(async () => (await pool.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [appName])).rowCount === 2, 15_000, 'both relays connected');
      const count = 10;
      const eventIds = await withTransaction(pool, (client) =>
        enqueueEvents(client, codec, Array.from({ length: count }, (_, i) => ({ topic, key: `agent-${i % 3}`, value: { id: `f-${i}`, seq: i, kind: 'ok' } }))),
      );
      await eventually(async () => (await unmarked(topic)) === 0, 30_000, 'every row marked published');

      // The cut round was published, not marked; the next holder published the same rows again.
      expect(rounds).toHaveLength(2);
      expect([...(rounds[1]?.ids ?? [])].sort()).toEqual([...eventIds].sort());
      expect([...(rounds[0]?.ids ?? [])].sort()).toEqual([...eventIds].sort());
      // Marked after the second publish began: by the new holder, never by the cut session.
      const { rows } = await pool.query<{ early: number }>('SELECT count(*)::int AS early FROM outbox WHERE topic = $1 AND published_at < $2', [topic, rounds[1]?.at]);
      expect(rows[0]?.early).toBe(0);

      // Every event exactly twice (that one round), in table order per key within each delivery.
      const records = await readRecords(topic, count * 2, uniqueName('relay-fence-reader'));
      const times = new Map<string, number>();
      for (const r of records) times.set(r.headers['event-id'] ?? '', (times.get(r.headers['event-id'] ?? '') ?? 0) + 1);
      expect(eventIds.every((id) => times.get(id) === 2)).toBe(true);

      // Nothing further goes out twice: later events are published once.
      await withTransaction(pool, (client) => enqueueEvents(client, codec, [{ topic, key: 'agent-0', value: { id: 'after', seq: 99, kind: 'ok' } }]));
      await eventually(async () => (await unmarked(topic)) === 0, 30_000, 'the later event marked');
      expect(rounds).toHaveLength(3);
      expect(rounds[2]?.ids).toHaveLength(1);
    } finally {
      for (const relay of relays) await relay.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });
});
