import pg from 'pg';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka } from '../../../support/runtime.ts';
import { startFixture, waitForExit, waitForLine } from '../../../support/processes.ts';

describe('worker processes: kill -9 and SIGTERM', () => {
  const env = testEnv();
  const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });
  const db = new pg.Client({ connectionString: env.DATABASE_URL });
  const dbSchema = uniqueName('rt_crash').replace(/-/g, '_');

  beforeAll(async () => {
    await db.connect();
    await db.query(`CREATE SCHEMA ${dbSchema}`);
  });
  afterAll(async () => {
    await db.query(`DROP SCHEMA IF EXISTS ${dbSchema} CASCADE`);
    await db.end();
  });

  async function prepare(name: string, count: number) {
    const topic = uniqueName(name);
    const cleanup = await createTestTopic(topic, 3);
    await db.query(`CREATE TABLE ${dbSchema}.processed (id text PRIMARY KEY, deliveries int NOT NULL)`);
    const id = await registry.getLatestSchemaId(`${topic}-value`);
    const producer = rawKafka().producer({ idempotent: true });
    await producer.connect();
    for (let start = 0; start < count; start += 500) {
      const messages = await Promise.all(
        Array.from({ length: Math.min(500, count - start) }, async (_, i) => ({
          key: `agent-${(start + i) % 37}`,
          value: await registry.encode(id, { id: `r-${start + i}`, seq: start + i, kind: 'ok' }),
        })),
      );
      await producer.send({ topic, acks: -1, messages });
    }
    await producer.disconnect();
    const fixtureEnv = { TOPIC: topic, GROUP_ID: uniqueName(`${name}-group`), DB_SCHEMA: dbSchema, ...env };
    const stats = async () => {
      const { rows } = await db.query<{ n: string; max: number | null; total: string | null }>(
        `SELECT count(*) AS n, max(deliveries) AS max, sum(deliveries) AS total FROM ${dbSchema}.processed`,
      );
      return { distinct: Number(rows[0]?.n), maxDeliveries: rows[0]?.max ?? 0, deliveries: Number(rows[0]?.total ?? 0) };
    };
    return {
      fixtureEnv,
      stats,
      cleanup: async () => {
        await db.query(`DROP TABLE ${dbSchema}.processed`);
        await cleanup();
      },
    };
  }

  it('loses nothing when a worker is killed with SIGKILL mid-batch and restarted', async () => {
    const count = 3000;
    const { fixtureEnv, stats, cleanup } = await prepare('rt-kill', count);
    try {
      const first = startFixture('idempotent-worker.ts', { ...fixtureEnv, HANDLER_DELAY_MS: '1' });
      await waitForLine(first, 'ready');
      await eventually(async () => (await stats()).distinct >= 400, 60_000, '400 records before the kill');
      first.kill('SIGKILL');
      expect((await waitForExit(first)).signal).toBe('SIGKILL');
      const atKill = await stats();
      expect(atKill.distinct).toBeLessThan(count);

      const second = startFixture('idempotent-worker.ts', { ...fixtureEnv, HANDLER_DELAY_MS: '0' });
      await waitForLine(second, 'ready');
      await eventually(async () => (await stats()).distinct === count, 90_000, 'every record after the restart');
      second.kill('SIGTERM');
      await waitForExit(second);
      const final = await stats();
      expect(final.distinct).toBe(count); // 0 lost; redeliveries (at-least-once) are allowed
      expect(final.deliveries).toBeGreaterThanOrEqual(count);
    } finally {
      await cleanup();
    }
  });

  it('drains on SIGTERM: in-flight records finish and are committed, nothing is processed twice after restart', async () => {
    const count = 1500;
    const { fixtureEnv, stats, cleanup } = await prepare('rt-drain', count);
    try {
      const first = startFixture('idempotent-worker.ts', { ...fixtureEnv, HANDLER_DELAY_MS: '3' });
      await waitForLine(first, 'ready');
      await eventually(async () => (await stats()).distinct >= 200, 60_000, '200 records before SIGTERM');
      first.kill('SIGTERM');
      expect(await waitForExit(first)).toEqual({ code: 0, signal: null });
      const atStop = await stats();
      expect(atStop.distinct).toBeLessThan(count);

      const second = startFixture('idempotent-worker.ts', { ...fixtureEnv, HANDLER_DELAY_MS: '0' });
      await waitForLine(second, 'ready');
      await eventually(async () => (await stats()).distinct === count, 90_000, 'every record after the restart');
      second.kill('SIGTERM');
      expect((await waitForExit(second)).code).toBe(0);
      const final = await stats();
      expect(final.distinct).toBe(count);
      expect(final.maxDeliveries).toBe(1);
    } finally {
      await cleanup();
    }
  });
});
