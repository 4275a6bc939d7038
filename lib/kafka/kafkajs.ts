import { Kafka, logLevel, type Consumer, type IHeaders, type Producer } from 'kafkajs';
import type { ConsumerClient, ConsumerOptions, Headers, KafkaClient, KafkaRecord, ProducerClient } from './types.ts';
import type { Logger } from '../logger.ts';

const NO_HEADERS: Headers = Object.freeze({});

function toHeaders(headers: IHeaders | undefined): Headers {
  if (!headers) return NO_HEADERS;
  const result: Headers = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    const first = Array.isArray(value) ? value[value.length - 1] : value;
    if (first !== undefined) result[name] = first.toString();
  }
  return result;
}

function kafkajsLogLevel(logger: Logger): logLevel {
  if (logger.isLevelEnabled('debug')) return logLevel.INFO;
  return logLevel.WARN;
}

export interface KafkajsOptions {
  readonly clientId: string;
  readonly brokers: readonly string[];
  readonly logger: Logger;
}

/** The kafkajs implementation of the runtime's Kafka interface. */
export function createKafkajsClient(options: KafkajsOptions): KafkaClient {
  const log = options.logger.child({ component: 'kafkajs' });
  const kafka = new Kafka({
    clientId: options.clientId,
    brokers: [...options.brokers],
    logLevel: kafkajsLogLevel(options.logger),
    logCreator: () => (entry) => {
      const { message, ...extra } = entry.log;
      const level = entry.level <= logLevel.ERROR ? 'error' : entry.level === logLevel.WARN ? 'warn' : 'debug';
      log[level]({ namespace: entry.namespace, ...extra }, message);
    },
    retry: { initialRetryTime: 300, retries: 8 },
  });

  return {
    consumer: (consumerOptions) => kafkajsConsumer(kafka, consumerOptions),
    producer: () => kafkajsProducer(kafka),
    async ping(timeoutMs) {
      const admin = kafka.admin();
      const timeout = new Promise<false>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
      const probe = (async () => {
        await admin.connect();
        await admin.describeCluster();
        return true;
      })().catch(() => false);
      try {
        return await Promise.race([probe, timeout]);
      } finally {
        void admin.disconnect().catch(() => undefined);
      }
    },
  };
}

function kafkajsConsumer(kafka: Kafka, options: ConsumerOptions): ConsumerClient {
  const consumer: Consumer = kafka.consumer({
    groupId: options.groupId,
    sessionTimeout: options.sessionTimeoutMs ?? 30_000,
    heartbeatInterval: options.heartbeatIntervalMs ?? 3_000,
    maxBytesPerPartition: options.maxBytesPerPartition ?? 1_048_576,
    allowAutoTopicCreation: false,
  });
  return {
    connect: () => consumer.connect(),
    subscribe: (topics, fromBeginning) => consumer.subscribe({ topics: [...topics], fromBeginning }),
    run: ({ concurrency, onBatch }) =>
      consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: concurrency,
        eachBatch: async (payload) => {
          const { batch } = payload;
          const records: KafkaRecord[] = batch.messages.map((m) => ({
            topic: batch.topic,
            partition: batch.partition,
            offset: m.offset,
            key: m.key,
            value: m.value,
            headers: toHeaders(m.headers),
            timestamp: m.timestamp,
          }));
          const lastHandled = await onBatch(
            { topic: batch.topic, partition: batch.partition, highWatermark: batch.highWatermark, records },
            { isActive: () => payload.isRunning() && !payload.isStale(), heartbeat: () => payload.heartbeat() },
          );
          // Without this kafkajs fetches the unresolved part of the batch again.
          if (lastHandled !== undefined) payload.resolveOffset(lastHandled);
        },
      }),
    commit: (offsets) => consumer.commitOffsets(offsets.map((o) => ({ topic: o.topic, partition: o.partition, offset: o.offset }))),
    pause: (topic, partitions) => consumer.pause([partitions ? { topic, partitions: [...partitions] } : { topic }]),
    resume: (topic, partitions) => consumer.resume([partitions ? { topic, partitions: [...partitions] } : { topic }]),
    seek: (topic, partition, offset) => consumer.seek({ topic, partition, offset }),
    onAssignment(listener) {
      consumer.on(consumer.events.GROUP_JOIN, (event) => listener(event.payload.memberAssignment));
    },
    disconnect: () => consumer.disconnect(),
  };
}

function kafkajsProducer(kafka: Kafka): ProducerClient {
  // Idempotent producer: no duplicates or reordering from the producer's own retries.
  const producer: Producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  return {
    connect: () => producer.connect(),
    async send(topic, records) {
      await producer.send({
        topic,
        acks: -1,
        messages: records.map((r) => ({ key: r.key, value: r.value, headers: r.headers })),
      });
    },
    disconnect: () => producer.disconnect(),
  };
}
