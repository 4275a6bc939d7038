import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { createWorker, type Worker } from '../../../../lib/runtime/worker.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { retryableError, unavailableError } from '../../../../lib/errors.ts';
import type { ProducerClient } from '../../../../lib/kafka/types.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, readRecords, testRuntimeDeps, type TestEvent } from '../../../support/runtime.ts';

const sumOf = async (metric: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }, labels: Record<string, string>) =>
  (await metric.get()).values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);

describe('consumer runtime: a dependency outage delays a record, never dead-letters it', () => {
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });

  async function produce(topic: string, messages: { partition: number; key: string; event: TestEvent }[]): Promise<void> {
    const id = await registry.getLatestSchemaId(`${topic}-value`);
    const producer = rawKafka().producer();
    await producer.connect();
    await producer.send({ topic, acks: -1, messages: await Promise.all(messages.map(async (m) => ({ partition: m.partition, key: m.key, value: await registry.encode(id, m.event) }))) });
    await producer.disconnect();
  }

  it('holds only the waiting partition, past the attempt budget, without counting attempts; the gauge rises then falls', async () => {
    const topic = uniqueName('rt-wait');
    const cleanup = await createTestTopic(topic, 2);
    const deps = testRuntimeDeps('rt-wait');
    let worker: Worker | undefined;
    try {
      await produce(topic, [
        { partition: 0, key: 'needs-db', event: { id: 'needs-db', seq: 0, kind: 'db' } },
        ...Array.from({ length: 10 }, (_, i) => ({ partition: 1, key: `p1-${i}`, event: { id: `p1-${i}`, seq: i, kind: 'ok' } })),
      ]);
      // The database is "down" for more attempts than the budget allows.
      const outageCalls = 8;
      let dbCalls = 0;
      const attemptsSeen: number[] = [];
      let blockedDuringOutage = 0;
      let done = false;
      const partitionOne: string[] = [];
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-wait',
          topic,
          groupId: uniqueName('rt-wait-group'),
          deps: {},
          concurrency: 2,
          retry: { maxAttempts: 3, initialDelayMs: 50, multiplier: 2, maxDelayMs: 200, unavailableMaxDelayMs: 200 },
          handler: async (event: TestEvent, ctx) => {
            if (event.kind !== 'db') {
              partitionOne.push(event.id);
              return;
            }
            dbCalls++;
            attemptsSeen.push(ctx.attempt);
            if (dbCalls <= outageCalls) {
              if (dbCalls > 1) blockedDuringOutage = Math.max(blockedDuringOutage, await sumOf(deps.metrics.dependencyBlockedPartitions, { dependency: 'postgres' }));
              // As pg reports `pg_ctl stop -m fast`, wrapped as a service wraps it.
              const cause = Object.assign(new Error('terminating connection due to administrator command'), { severity: 'FATAL', code: '57P01' });
              throw retryableError('DATABASE_UNAVAILABLE', 'Postgres failed while processing the request', cause);
            }
            done = true;
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => done && partitionOne.length === 10, 30_000, 'the record handled once the database is back');

      expect(dbCalls).toBe(outageCalls + 1);
      // Waits do not count: every call is the record's first attempt of its own.
      expect(attemptsSeen).toEqual(Array.from({ length: outageCalls + 1 }, () => 1));
      expect(blockedDuringOutage).toBe(1);
      expect(await sumOf(deps.metrics.dependencyBlockedPartitions, { dependency: 'postgres' })).toBe(0);
      expect(await sumOf(deps.metrics.dependencyWaits, { topic, dependency: 'postgres' })).toBe(outageCalls);
      expect((await deps.metrics.recordsDeadLettered.get()).values).toEqual([]);
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('keeps the attempt count when the dead-letter write fails: the record is dead-lettered once Kafka takes it, without a fresh budget', async () => {
    const topic = uniqueName('rt-dlqfail');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('rt-dlqfail');
    let worker: Worker | undefined;
    try {
      await produce(topic, [
        { partition: 0, key: 'always-fails', event: { id: 'x', seq: 1, kind: 'fail' } },
        { partition: 0, key: 'after', event: { id: 'after', seq: 2, kind: 'ok' } },
      ]);
      // Our producer, whose first dead-letter writes fail as they do while Kafka is unreachable.
      let failingDlqWrites = 3;
      const flaky: ProducerClient = {
        connect: () => deps.producer.connect(),
        disconnect: () => deps.producer.disconnect(),
        sendMany: (batches) => deps.producer.sendMany(batches),
        async send(target, records) {
          if (target.endsWith('.dlq') && failingDlqWrites-- > 0) throw unavailableError('kafka', 'KAFKA_UNAVAILABLE', 'broker unreachable');
          return deps.producer.send(target, records);
        },
      };
      let calls = 0;
      const handled: string[] = [];
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-dlqfail',
          topic,
          groupId: uniqueName('rt-dlqfail-group'),
          deps: {},
          retry: { maxAttempts: 3, initialDelayMs: 50, multiplier: 2, maxDelayMs: 200, unavailableMaxDelayMs: 200 },
          handler: async (event: TestEvent) => {
            if (event.kind === 'fail') {
              calls++;
              throw retryableError('ALWAYS_FAILS', `failure ${calls}`);
            }
            handled.push(event.id);
          },
        },
        { ...deps, producer: flaky },
      );
      await worker.start();
      await eventually(() => handled.includes('after'), 30_000, 'the next record handled');

      // The handler ran its budget once; the failed DLQ writes did not start it over.
      expect(calls).toBe(3);
      const [dead] = await readRecords(`${topic}.dlq`, 1, uniqueName('rt-dlqfail-read'));
      expect(dead?.headers[DLQ_HEADERS.attempts]).toBe('3');
      expect(dead?.headers[DLQ_HEADERS.errorCode]).toBe('ALWAYS_FAILS');
      expect(await sumOf(deps.metrics.dependencyWaits, { topic, dependency: 'kafka' })).toBe(3);
      expect(await sumOf(deps.metrics.dependencyBlockedPartitions, {})).toBe(0);
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });
});
