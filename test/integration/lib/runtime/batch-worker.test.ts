import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { createBatchWorker, type BatchWorker, type TopicPartitions } from '../../../../lib/runtime/batch-worker.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { permanentError, unavailableError } from '../../../../lib/errors.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, readRecords, testRuntimeDeps, type TestEvent } from '../../../support/runtime.ts';

// The runtime's batch mode on the real stack: one handler call per partition batch, invalid records
// dead-lettered without taking their batch down, an outage holding the partition, co-partitioning.
describe('batch worker', () => {
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });

  async function produce(topic: string, messages: { partition: number; key: string; value: Buffer | TestEvent }[]): Promise<void> {
    const id = await registry.getLatestSchemaId(`${topic}-value`);
    const producer = rawKafka().producer();
    await producer.connect();
    await producer.send({
      topic,
      acks: -1,
      messages: await Promise.all(messages.map(async (m) => ({ partition: m.partition, key: m.key, value: Buffer.isBuffer(m.value) ? m.value : await registry.encode(id, m.value) }))),
    });
    await producer.disconnect();
  }

  it('hands whole batches to the handler, dead-letters undecodable and invalid records, and holds the partition through an outage', async () => {
    const topic = uniqueName('rt-batch');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('rt-batch');
    let worker: BatchWorker | undefined;
    try {
      await produce(topic, [
        ...Array.from({ length: 5 }, (_, i) => ({ partition: 0, key: `a-${i}`, value: { id: `a-${i}`, seq: i, kind: 'ok' } })),
        { partition: 0, key: 'garbage', value: Buffer.from('not avro') },
        { partition: 0, key: 'invalid', value: { id: 'invalid', seq: -1, kind: 'ok' } },
        ...Array.from({ length: 5 }, (_, i) => ({ partition: 0, key: `b-${i}`, value: { id: `b-${i}`, seq: 5 + i, kind: 'ok' } })),
      ]);
      const handled: string[] = [];
      let calls = 0;
      let outages = 3;
      await deps.producer.connect();
      worker = createBatchWorker<TestEvent, undefined>(
        {
          service: 'rt-batch',
          topics: [topic],
          groupId: uniqueName('rt-batch-group'),
          deps: undefined,
          retry: { maxAttempts: 2, initialDelayMs: 50, multiplier: 2, maxDelayMs: 100, unavailableMaxDelayMs: 100 },
          validate: (value) => {
            const event = value as TestEvent;
            if (event.seq < 0) throw permanentError('VALIDATION_FAILED', 'seq must not be negative');
            return event;
          },
          handler: async (batch) => {
            calls++;
            // Down more times than the attempt budget allows: never dead-lettered for it.
            if (outages-- > 0) throw unavailableError('redis', 'REDIS_UNAVAILABLE', 'connection refused');
            handled.push(...batch.records.map((r) => r.value.id));
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => handled.length >= 10, 30_000, 'ten valid records handled');
      expect(handled).toEqual([...Array.from({ length: 5 }, (_, i) => `a-${i}`), ...Array.from({ length: 5 }, (_, i) => `b-${i}`)]);
      expect(calls).toBeGreaterThanOrEqual(4);
      const dead = await readRecords(`${topic}.dlq`, 2, uniqueName('rt-batch-dlq'));
      expect(Object.fromEntries(dead.map((r) => [r.key?.toString() ?? '', r.headers[DLQ_HEADERS.errorCode]]))).toEqual({ garbage: 'DECODE_BAD_FRAMING', invalid: 'VALIDATION_FAILED' });
      await eventually(() => worker?.progress(topic, 0)?.next === 12n, 10_000, 'progress at the end of the partition');
      expect((await worker.latestOffsets(topic))?.get(0)).toBe(12n);
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('co-partitioned: with two members, each owns the same partitions of both topics', async () => {
    const left = uniqueName('rt-co-a');
    const right = uniqueName('rt-co-b');
    const cleanups = [await createTestTopic(left, 4), await createTestTopic(right, 4)];
    const groupId = uniqueName('rt-co-group');
    const workers: BatchWorker[] = [];
    const assignments: TopicPartitions[] = [{}, {}];
    try {
      for (const i of [0, 1]) {
        const deps = testRuntimeDeps(`rt-co-${i}`);
        const worker = createBatchWorker<TestEvent, undefined>(
          { service: 'rt-co', topics: [left, right], groupId, coPartitioned: true, deps: undefined, handler: async () => undefined, onAssignment: ({ assigned }) => void (assignments[i] = assigned) },
          deps,
        );
        workers.push(worker);
        await worker.start();
      }
      await eventually(
        () => assignments.every((a) => (a[left]?.length ?? 0) === 2) && assignments.every((a) => JSON.stringify(a[left]) === JSON.stringify(a[right])),
        60_000,
        'two partitions of each topic per member, the same numbers',
      );
      expect([...(assignments[0]?.[left] ?? []), ...(assignments[1]?.[left] ?? [])].sort()).toEqual([0, 1, 2, 3]);
    } finally {
      for (const worker of workers) await worker.stop();
      for (const cleanup of cleanups) await cleanup();
    }
  });
});
