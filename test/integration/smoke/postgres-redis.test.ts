import pg from 'pg';
import { Redis } from 'ioredis';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { testEnv, uniqueName } from '../../support/stack.ts';

describe('Postgres with pg', () => {
  it('connects and runs a query in its own schema', async () => {
    const client = new pg.Client({ connectionString: testEnv().DATABASE_URL });
    await client.connect();
    const schema = uniqueName('smoke').replace(/-/g, '_');
    try {
      await client.query(`CREATE SCHEMA ${schema}`);
      await client.query(`CREATE TABLE ${schema}.t (id int primary key, v text)`);
      await client.query(`INSERT INTO ${schema}.t VALUES ($1, $2)`, [1, 'one']);
      const { rows } = await client.query<{ v: string; version: string }>(`SELECT v, version() AS version FROM ${schema}.t`);
      expect(rows[0]?.v).toBe('one');
      expect(rows[0]?.version).toMatch(/^PostgreSQL/);
    } finally {
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await client.end();
    }
  });
});

describe('Redis with ioredis and BullMQ', () => {
  const url = testEnv().REDIS_URL ?? '';
  const prefix = uniqueName('smoke');

  it('queues a delayed job and runs it after its delay', async () => {
    const connection = new Redis(url, { maxRetriesPerRequest: null });
    const queueName = 'delayed';
    const queue = new Queue(queueName, { connection, prefix });
    const events = new QueueEvents(queueName, { connection: connection.duplicate(), prefix });
    const ranAt: number[] = [];
    const worker = new Worker(
      queueName,
      async (job) => {
        ranAt.push(Date.now());
        return (job.data as { n: number }).n * 2;
      },
      { connection: connection.duplicate(), prefix },
    );
    try {
      await events.waitUntilReady();
      const queuedAt = Date.now();
      const job = await queue.add('double', { n: 21 }, { delay: 500 });
      expect(await job.getState()).toBe('delayed');
      await expect(job.waitUntilFinished(events, 15_000)).resolves.toBe(42);
      expect(ranAt).toHaveLength(1);
      expect((ranAt[0] ?? 0) - queuedAt).toBeGreaterThanOrEqual(450);
    } finally {
      await worker.close();
      await events.close();
      await queue.obliterate({ force: true });
      await queue.close();
      const keys = await connection.keys(`${prefix}:*`);
      if (keys.length > 0) await connection.del(...keys);
      connection.disconnect();
    }
  });
});
