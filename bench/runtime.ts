// Consumer runtime overhead: the same topic of small Avro records consumed by raw kafkajs (batch
// consumption that only decodes) and by the runtime with a no-op handler, in the same run.
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { localStackEnv } from '../lib/stack/endpoints.ts';
import { createAvroCodec, type AvroCodec } from '../lib/kafka/avro.ts';
import { createKafkajsClient } from '../lib/kafka/kafkajs.ts';
import { createLogger } from '../lib/logger.ts';
import { createMetrics } from '../lib/metrics.ts';
import { createWorker } from '../lib/runtime/worker.ts';

const schema = {
  type: 'record',
  name: 'BenchHeartbeat',
  namespace: 'io.agentmanager.bench',
  fields: [
    { name: 'agentId', type: 'string' },
    { name: 'sequence', type: 'long' },
    { name: 'sentAt', type: 'long' },
  ],
};

const env = { ...localStackEnv(), ...process.env } as Record<string, string>;
const brokers = env.KAFKA_BROKERS?.split(',') ?? [];

async function produce(kafka: Kafka, registry: SchemaRegistry, topic: string, count: number, partitions: number): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: partitions }, { topic: `${topic}.dlq`, numPartitions: 1 }] });
  await admin.disconnect();
  const { id } = await registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(schema) }, { subject: `${topic}-value` });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const started = Date.now();
  const chunk = 20_000;
  for (let sent = 0; sent < count; sent += chunk) {
    const n = Math.min(chunk, count - sent);
    const messages = await Promise.all(
      Array.from({ length: n }, async (_, i) => ({
        key: `agent-${(sent + i) % 5000}`,
        value: await registry.encode(id, { agentId: `agent-${(sent + i) % 5000}`, sequence: sent + i, sentAt: Date.now() }),
      })),
    );
    await producer.send({ topic, acks: -1, messages });
    if ((sent / chunk) % 10 === 0) process.stdout.write(`\rproduced ${sent + n} / ${count}`);
  }
  await producer.disconnect();
  console.log(`\rproduced ${count} records in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function raw(kafka: Kafka, codec: AvroCodec, topic: string, count: number): Promise<number> {
  const consumer = kafka.consumer({ groupId: `${topic}-raw` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let seen = 0;
  let started = 0;
  const done = new Promise<number>((resolve) => {
    void consumer.run({
      autoCommit: false,
      partitionsConsumedConcurrently: 4,
      eachBatch: async ({ batch }) => {
        if (started === 0) started = performance.now();
        for (const message of batch.messages) {
          if (message.value) await codec.decode(message.value);
          if (++seen === count) resolve(performance.now() - started);
        }
      },
    });
  });
  const ms = await done;
  await consumer.disconnect();
  return (count / ms) * 1000;
}

async function runtime(codec: AvroCodec, topic: string, count: number): Promise<number> {
  const logger = createLogger('bench', 'warn');
  const kafka = createKafkajsClient({ clientId: 'bench', brokers, logger });
  const producer = kafka.producer();
  await producer.connect();
  let seen = 0;
  let started = 0;
  let resolve: (ms: number) => void = () => undefined;
  const done = new Promise<number>((r) => (resolve = r));
  const worker = createWorker(
    {
      service: 'bench',
      topic,
      groupId: `${topic}-runtime`,
      concurrency: 4,
      deps: {},
      handler: async () => {
        if (started === 0) started = performance.now();
        if (++seen === count) resolve(performance.now() - started);
      },
    },
    { kafka, codec, producer, logger, metrics: createMetrics('bench', { defaultMetrics: false }) },
  );
  await worker.start();
  const progress = setInterval(() => process.stderr.write(`runtime: ${seen}\n`), 2000);
  const ms = await done;
  clearInterval(progress);
  await worker.stop();
  await producer.disconnect();
  return (count / ms) * 1000;
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { records: { type: 'string', default: '1000000' }, partitions: { type: 'string', default: '4' } } });
  const count = Number(values.records);
  const partitions = Number(values.partitions);
  const topic = `bench-runtime-${Date.now().toString(36)}`;
  const kafka = new Kafka({ clientId: 'bench', brokers, logLevel: logLevel.NOTHING });
  const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '' });
  console.log(`runtime benchmark: ${count} records, ${partitions} partitions, topic ${topic}`);
  await produce(kafka, registry, topic, count, partitions);
  try {
    const rawRate = await raw(kafka, codec, topic, count);
    console.log(`raw kafkajs eachBatch + decode: ${Math.round(rawRate)} records/s`);
    const runtimeRate = await runtime(codec, topic, count);
    console.log(`runtime, no-op handler:        ${Math.round(runtimeRate)} records/s`);
    console.log(`runtime/raw = ${(runtimeRate / rawRate).toFixed(2)}`);
  } finally {
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => undefined);
    await admin.disconnect();
    await fetch(`${env.SCHEMA_REGISTRY_URL}/subjects/${topic}-value`, { method: 'DELETE' }).catch(() => undefined);
  }
}
