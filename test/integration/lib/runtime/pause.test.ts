import { setTimeout as sleep } from 'node:timers/promises';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { createWorker, type Worker } from '../../../../lib/runtime/worker.ts';
import { retryableError } from '../../../../lib/errors.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, testRuntimeDeps, type TestEvent } from '../../../support/runtime.ts';


describe('pause and resume (safe mode) with the real broker', () => {
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });

  it('pauseAll holds every partition (records wait in Kafka), resumeAll goes on in order; a partition in retry backoff stays paused', async () => {
    const topic = uniqueName('rt-pause');
    const cleanup = await createTestTopic(topic, 2);
    const deps = testRuntimeDeps('rt-pause');
    const groupId = uniqueName('rt-pause-group');
    let worker: Worker | undefined;
    try {
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const producer = rawKafka().producer();
      await producer.connect();
      for (const partition of [0, 1]) {
        await producer.send({
          topic,
          acks: -1,
          messages: await Promise.all(
            Array.from({ length: 20 }, async (_, seq) => ({
              partition,
              key: `p${partition}`,
              value: await registry.encode(id, { id: `p${partition}-${seq}`, seq, kind: partition === 0 && seq === 12 ? 'flaky' : 'ok' }),
            })),
          ),
        });
      }
      await producer.disconnect();

      const handled: Array<{ partition: number; seq: number; at: number }> = [];
      let flakyFailedAt = 0;
      let flakyDoneAt = 0;
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'rt-pause',
          topic,
          groupId,
          deps: {},
          concurrency: 2,
          retry: { maxAttempts: 3, initialDelayMs: 3_000, multiplier: 1, maxDelayMs: 3_000 },
          handler: async (event: TestEvent, ctx) => {
            if (event.kind === 'flaky' && ctx.attempt === 1) {
              flakyFailedAt = Date.now();
              throw retryableError('BUSY', 'try again');
            }
            if (event.kind === 'flaky') flakyDoneAt = Date.now();
            handled.push({ partition: ctx.partition, seq: event.seq, at: Date.now() });
            // Safe mode switched on from inside a handler, after the fifth record.
            if (handled.length === 5) worker?.pauseAll('safe-mode');
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => handled.length >= 5, 30_000, 'five records before the pause');
      await sleep(1_500);
      // At most the record in flight on the other partition ran after the pause.
      const whilePaused = handled.length;
      expect(whilePaused).toBeLessThanOrEqual(6);
      await sleep(1_000);
      expect(handled.length).toBe(whilePaused);
      expect(await deps.metrics.pausedPartitions.get()).toMatchObject({ values: [{ value: 2 }] });

      worker.resumeAll('safe-mode');
      await eventually(() => flakyFailedAt > 0, 30_000, 'the flaky record to fail once');
      // Safe mode on and off during partition 0's backoff: partition 0 must still wait for it.
      worker.pauseAll('safe-mode');
      worker.resumeAll('safe-mode');
      await eventually(() => handled.length === 40, 30_000, 'every record after resuming');
      expect(flakyDoneAt - flakyFailedAt).toBeGreaterThanOrEqual(1_400); // backoff is 1.5-3 s

      for (const partition of [0, 1]) {
        const seqs = handled.filter((h) => h.partition === partition).map((h) => h.seq);
        expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i)); // order kept, nothing twice
      }
      // Partition 1 was not held by partition 0's backoff.
      const lastOfPartitionOne = Math.max(...handled.filter((h) => h.partition === 1).map((h) => h.at));
      expect(lastOfPartitionOne).toBeLessThan(flakyDoneAt);
      expect(await deps.metrics.pausedPartitions.get()).toMatchObject({ values: [{ value: 0 }] });
      // Batch-level metric updates: one latency observation and one count per handled record.
      const latency = await deps.metrics.handlerSeconds.get();
      expect(latency.values.find((v) => v.metricName === 'agent_manager_handler_duration_seconds_count')?.value).toBe(40);
      expect((await deps.metrics.recordsProcessed.get()).values[0]?.value).toBe(40);
      expect((await deps.metrics.recordsFailed.get()).values).toMatchObject([{ labels: { topic, code: 'BUSY' }, value: 1 }]);

      const admin = rawKafka().admin();
      await admin.connect();
      try {
        await eventually(async () => {
          const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] });
          return offsets?.partitions.every((p) => p.offset === '20') ?? false;
        }, 10_000, 'both partitions committed to the end');
      } finally {
        await admin.disconnect();
      }
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });
});
