import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { createWorker, type Worker } from '../../../../lib/runtime/worker.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { permanentError, retryableError } from '../../../../lib/errors.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, readRecords, testRuntimeDeps, type TestEvent } from '../../../support/runtime.ts';

function validateTestEvent(value: unknown): TestEvent {
  const event = value as TestEvent;
  if (event.seq < 0) throw permanentError('VALIDATION_FAILED', `seq must be ≥ 0, got ${event.seq}`);
  return event;
}

describe('consumer runtime against the real broker and registry', () => {
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });

  it('dead-letters each kind of poison record with its reason and keeps processing the good ones in order', async () => {
    const topic = uniqueName('rt-poison');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('rt-poison');
    let worker: Worker | undefined;
    try {
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const good = async (n: number) => registry.encode(id, { id: `good-${n}`, seq: n, kind: 'ok' });
      const unknownSchema = Buffer.concat([Buffer.from([0, 0x7f, 0xff, 0xff, 0xf0]), Buffer.from('whatever')]);
      const truncatedBody = Buffer.from([0, ...Buffer.from([0, 0, 0, 0]).map((_, i) => (id >> (8 * (3 - i))) & 0xff), 0x02]);
      const sequence: Array<[string, Buffer]> = [
        ['good-1', await good(1)],
        ['garbage', Buffer.from('definitely not avro')],
        ['good-2', await good(2)],
        ['unknown-schema', unknownSchema],
        ['good-3', await good(3)],
        ['negative-seq', await registry.encode(id, { id: 'bad', seq: -5, kind: 'ok' })],
        ['good-4', await good(4)],
        ['poison', await registry.encode(id, { id: 'poison', seq: 9, kind: 'poison' })],
        ['good-5', await good(5)],
        ['truncated', truncatedBody],
        ['good-6', await good(6)],
      ];
      const producer = rawKafka().producer();
      await producer.connect();
      await producer.send({ topic, acks: -1, messages: sequence.map(([key, value]) => ({ key, value, headers: { origin: 'test' } })) });
      await producer.disconnect();

      const processed: string[] = [];
      const groupId = uniqueName('rt-poison-group');
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-poison',
          topic,
          groupId,
          validate: validateTestEvent,
          deps: {},
          handler: async (event: TestEvent) => {
            if (event.kind === 'poison') throw permanentError('HANDLER_REJECTED', 'poison kind is refused by the handler');
            processed.push(event.id);
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => processed.length === 6, 30_000, 'six good records');

      expect(processed).toEqual(['good-1', 'good-2', 'good-3', 'good-4', 'good-5', 'good-6']);
      const dead = await readRecords(`${topic}.dlq`, 5, uniqueName('dlq-reader'));
      const byKey = new Map(dead.map((r) => [r.key?.toString(), r]));
      expect(byKey.get('garbage')?.headers[DLQ_HEADERS.errorCode]).toBe('DECODE_BAD_FRAMING');
      expect(byKey.get('unknown-schema')?.headers[DLQ_HEADERS.errorCode]).toBe('DECODE_UNKNOWN_SCHEMA');
      expect(byKey.get('negative-seq')?.headers[DLQ_HEADERS.errorCode]).toBe('VALIDATION_FAILED');
      expect(byKey.get('poison')?.headers[DLQ_HEADERS.errorCode]).toBe('HANDLER_REJECTED');
      expect(byKey.get('truncated')?.headers[DLQ_HEADERS.errorCode]).toBe('DECODE_FAILED');
      // The original record travels unchanged, with where it came from and why.
      const garbage = byKey.get('garbage');
      expect(garbage?.value?.toString()).toBe('definitely not avro');
      expect(garbage?.headers.origin).toBe('test');
      expect(garbage?.headers[DLQ_HEADERS.sourceTopic]).toBe(topic);
      expect(garbage?.headers[DLQ_HEADERS.sourcePartition]).toBe('0');
      expect(garbage?.headers[DLQ_HEADERS.sourceOffset]).toBe('1');
      expect(garbage?.headers[DLQ_HEADERS.attempts]).toBe('1');
      expect(garbage?.headers[DLQ_HEADERS.errorMessage]).toMatch(/not a Confluent-framed Avro record/);

      // Everything, dead-lettered or not, is committed: offset of the last record + 1.
      const admin = rawKafka().admin();
      await admin.connect();
      try {
        await eventually(async () => {
          const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] });
          return offsets?.partitions[0]?.offset === String(sequence.length);
        }, 10_000, 'the committed offset to pass the last record');
      } finally {
        await admin.disconnect();
      }
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('retries a retryably failing record with backoff while the other partition goes on, then runs it once more than it failed', async () => {
    const topic = uniqueName('rt-retry');
    const cleanup = await createTestTopic(topic, 2);
    const deps = testRuntimeDeps('rt-retry');
    let worker: Worker | undefined;
    try {
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const producer = rawKafka().producer();
      await producer.connect();
      await producer.send({ topic, acks: -1, messages: [{ partition: 0, key: 'flaky', value: await registry.encode(id, { id: 'flaky', seq: 0, kind: 'flaky' }) }] });
      await producer.send({
        topic,
        acks: -1,
        messages: await Promise.all(
          Array.from({ length: 20 }, async (_, i) => ({ partition: 1, key: `p1-${i}`, value: await registry.encode(id, { id: `p1-${i}`, seq: i, kind: 'ok' }) })),
        ),
      });
      await producer.disconnect();

      const failuresBeforeSuccess = 3;
      let flakyCalls = 0;
      let flakyDoneAt = 0;
      const partitionOneDoneAt: number[] = [];
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-retry',
          topic,
          groupId: uniqueName('rt-retry-group'),
          deps: {},
          concurrency: 2,
          retry: { maxAttempts: 5, initialDelayMs: 400, multiplier: 2, maxDelayMs: 5_000 },
          handler: async (event: TestEvent, ctx) => {
            if (event.kind === 'flaky') {
              flakyCalls++;
              expect(ctx.attempt).toBe(flakyCalls);
              if (flakyCalls <= failuresBeforeSuccess) throw retryableError('DEPENDENCY_BUSY', `busy (${flakyCalls})`);
              flakyDoneAt = Date.now();
              return;
            }
            partitionOneDoneAt.push(Date.now());
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => flakyDoneAt > 0 && partitionOneDoneAt.length === 20, 30_000, 'both partitions');

      expect(flakyCalls).toBe(failuresBeforeSuccess + 1);
      // Partition 1 did not wait for partition 0's backoff (≥ 200 + 400 + 800 ms).
      expect(Math.max(...partitionOneDoneAt)).toBeLessThan(flakyDoneAt);
      expect((await deps.metrics.recordsDeadLettered.get()).values).toEqual([]);
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('dead-letters a record that keeps failing retryably after the last attempt', async () => {
    const topic = uniqueName('rt-exhaust');
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('rt-exhaust');
    let worker: Worker | undefined;
    try {
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const producer = rawKafka().producer();
      await producer.connect();
      await producer.send({
        topic,
        acks: -1,
        messages: [
          { key: 'always-fails', value: await registry.encode(id, { id: 'x', seq: 1, kind: 'fail' }) },
          { key: 'after', value: await registry.encode(id, { id: 'after', seq: 2, kind: 'ok' }) },
        ],
      });
      await producer.disconnect();
      let calls = 0;
      const processed: string[] = [];
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-exhaust',
          topic,
          groupId: uniqueName('rt-exhaust-group'),
          deps: {},
          retry: { maxAttempts: 3, initialDelayMs: 100, multiplier: 2, maxDelayMs: 1_000 },
          handler: async (event: TestEvent) => {
            if (event.kind === 'fail') {
              calls++;
              throw new Error('an unexpected bug'); // unknown errors are retryable
            }
            processed.push(event.id);
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => processed.length === 1, 30_000, 'the record after the failing one');
      expect(calls).toBe(3);
      const [dead] = await readRecords(`${topic}.dlq`, 1, uniqueName('dlq-reader'));
      expect(dead?.headers[DLQ_HEADERS.errorCode]).toBe('UNEXPECTED');
      expect(dead?.headers[DLQ_HEADERS.attempts]).toBe('3');
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });
});
