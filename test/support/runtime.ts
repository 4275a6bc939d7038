import { Kafka, type Admin } from 'kafkajs';
import type { StackPrincipal } from '../../dev/stack/endpoints.ts';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { createTopicsAndWait } from '../../lib/contracts/topics.ts';
import { createKafkajsClient } from '../../lib/kafka/kafkajs.ts';
import { createAvroCodec } from '../../lib/kafka/avro.ts';
import { createLogger } from '../../lib/logger.ts';
import { createMetrics } from '../../lib/metrics.ts';
import type { KafkaRecord } from '../../lib/kafka/types.ts';
import { brokers, testEnv, testKafkaConfig, testTls } from './stack.ts';

export const TEST_SCHEMA = {
  type: 'record',
  name: 'TestEvent',
  namespace: 'io.agentmanager.test',
  fields: [
    { name: 'id', type: 'string' },
    { name: 'seq', type: 'int' },
    { name: 'kind', type: 'string', default: 'ok' },
  ],
} as const;

export interface TestEvent {
  id: string;
  seq: number;
  kind: string;
}

/** A plain kafkajs client on the test brokers, as `principal` (default: the operator, a super user). */
export function rawKafka(principal?: StackPrincipal): Kafka {
  return new Kafka(testKafkaConfig('test', principal));
}

/** Creates `topic` (and its `.dlq`) and registers the test schema; returns the cleanup. */
export async function createTestTopic(topic: string, partitions: number): Promise<() => Promise<void>> {
  const admin: Admin = rawKafka().admin();
  await admin.connect();
  await createTopicsAndWait(admin, [
    { topic, numPartitions: partitions, replicationFactor: 1 },
    { topic: `${topic}.dlq`, numPartitions: 1, replicationFactor: 1 },
  ]);
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });
  await registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(TEST_SCHEMA) }, { subject: `${topic}-value` });
  return async () => {
    await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => undefined);
    await admin.disconnect();
    await fetch(`${testEnv().SCHEMA_REGISTRY_URL}/subjects/${topic}-value`, { method: 'DELETE' }).catch(() => undefined);
  };
}

/** The runtime's real dependencies, pointed at the local stack, with silent logs. */
export function testRuntimeDeps(service: string) {
  const logger = createLogger(service, (process.env.TEST_LOG_LEVEL as 'info' | undefined) ?? 'silent');
  const kafka = createKafkajsClient({ clientId: service, brokers: brokers(), tls: testTls(), logger });
  const codec = createAvroCodec({ registryUrl: testEnv().SCHEMA_REGISTRY_URL ?? '' });
  const producer = kafka.producer();
  const metrics = createMetrics(service, { defaultMetrics: false });
  return { logger, kafka, codec, producer, metrics };
}

/** Reads `count` records of `topic` from the beginning with a throwaway group. */
export async function readRecords(topic: string, count: number, groupId: string, timeoutMs = 30_000): Promise<KafkaRecord[]> {
  const consumer = rawKafka().consumer({ groupId });
  const records: KafkaRecord[] = [];
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`read ${records.length} of ${count} records of ${topic} in ${timeoutMs} ms`)), timeoutMs);
      void consumer.run({
        eachMessage: async ({ message, partition }) => {
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(message.headers ?? {})) if (v !== undefined) headers[k] = v.toString();
          records.push({ topic, partition, offset: message.offset, key: message.key, value: message.value, headers, timestamp: message.timestamp });
          if (records.length >= count) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return records;
}

export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 30_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
