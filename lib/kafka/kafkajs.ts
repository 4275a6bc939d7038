import type { ConnectionOptions } from 'node:tls';
import kafkajs, { AssignerProtocol, Kafka, logLevel, Partitioners, type Admin, type Consumer, type IHeaders, type KafkaMessage, type Message, type PartitionAssigner, type Producer } from 'kafkajs';

// This module is the only one in lib/, services/ and cli/ that imports kafkajs: the admin-side types
// and enums other modules need (topics, ACLs, offsets) come from here.
export type { Admin as KafkaAdmin, AclEntry, ITopicConfig } from 'kafkajs';
export const { AclOperationTypes, AclPermissionTypes, AclResourceTypes, ResourcePatternTypes, ConfigResourceTypes } = kafkajs;
import type { ConsumerClient, ConsumerOptions, Headers, KafkaClient, KafkaRecord, OffsetReader, OutgoingRecord, ProducerClient, RecordBatch, RecordHeader } from './types.ts';
import type { KafkaTls } from '../config.ts';
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

/**
 * The headers as bytes. kafkajs decodes them into an object (a repeated key becomes an array of its
 * values, in order), so keys come in order of first appearance; a header without a value is null.
 */
function toHeaderList(headers: IHeaders | undefined): readonly RecordHeader[] {
  if (!headers) return [];
  const list: RecordHeader[] = [];
  const bytes = (v: Buffer | string | null | undefined): Buffer | null => (v === null || v === undefined ? null : Buffer.isBuffer(v) ? v : Buffer.from(v));
  for (const name in headers) {
    const value = headers[name] as Buffer | string | null | undefined | (Buffer | string)[];
    if (Array.isArray(value)) for (const v of value) list.push({ key: name, value: bytes(v) });
    else list.push({ key: name, value: bytes(value) });
  }
  return list;
}

/**
 * A kafkajs message seen through the runtime's `KafkaRecord`: the fields are references to the
 * message's own (no copies), and the headers are converted to strings only when read.
 */
class KafkajsRecord implements KafkaRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly timestamp: string;
  #rawHeaders: IHeaders | undefined;
  #headers: Headers | undefined;

  constructor(topic: string, partition: number, message: KafkaMessage) {
    this.topic = topic;
    this.partition = partition;
    this.offset = message.offset;
    this.key = message.key;
    this.value = message.value;
    this.timestamp = message.timestamp;
    this.#rawHeaders = message.headers;
  }

  get headers(): Headers {
    return (this.#headers ??= toHeaders(this.#rawHeaders));
  }

  get headerList(): readonly RecordHeader[] {
    return toHeaderList(this.#rawHeaders);
  }

  /** JSON (a logged record) shows the headers like a plain record's. */
  toJSON(): Omit<KafkaRecord, 'headers'> & { headers: Headers } {
    const { topic, partition, offset, key, value, timestamp, headers } = this;
    return { topic, partition, offset, key, value, timestamp, headers };
  }
}

/** A kafkajs batch behind the runtime's `RecordBatch`: records are read in place, by index. */
class KafkajsBatch implements RecordBatch {
  readonly topic: string;
  readonly partition: number;
  readonly highWatermark: string;
  readonly size: number;
  readonly #messages: KafkaMessage[];

  constructor(topic: string, partition: number, highWatermark: string, messages: KafkaMessage[]) {
    this.topic = topic;
    this.partition = partition;
    this.highWatermark = highWatermark;
    this.size = messages.length;
    this.#messages = messages;
  }

  offsetAt(index: number): string {
    return (this.#messages[index] as KafkaMessage).offset;
  }

  valueAt(index: number): Buffer | null {
    return (this.#messages[index] as KafkaMessage).value;
  }

  recordAt(index: number): KafkaRecord {
    return new KafkajsRecord(this.topic, this.partition, this.#messages[index] as KafkaMessage);
  }
}

/**
 * Partition p of EVERY subscribed topic goes to the same member (members sorted by id, p modulo
 * their count). Topics keyed alike with the same partition count (agent-heartbeats and
 * agent-status) then have each key's records of both topics in one member.
 */
export const CO_PARTITIONED_ASSIGNER = 'AgentManagerCoPartitioned';
const coPartitionedAssigner: PartitionAssigner = ({ cluster }) => ({
  name: CO_PARTITIONED_ASSIGNER,
  version: 1,
  async assign({ members, topics }) {
    const memberIds = members.map((m) => m.memberId).sort();
    const assignment: Record<string, Record<string, number[]>> = {};
    for (const topic of topics) {
      const partitions = cluster
        .findTopicPartitionMetadata(topic)
        .map((m) => m.partitionId)
        .sort((a, b) => a - b);
      for (const partition of partitions) {
        const member = memberIds[partition % memberIds.length] as string;
        ((assignment[member] ??= {})[topic] ??= []).push(partition);
      }
    }
    return memberIds.map((memberId) => ({
      memberId,
      memberAssignment: AssignerProtocol.MemberAssignment.encode({ version: 1, assignment: assignment[memberId] ?? {}, userData: Buffer.alloc(0) }),
    }));
  },
  protocol({ topics }) {
    return { name: CO_PARTITIONED_ASSIGNER, metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.alloc(0) }) };
  },
});

function kafkajsLogLevel(logger: Logger): logLevel {
  if (logger.isLevelEnabled('debug')) return logLevel.INFO;
  return logLevel.WARN;
}

export interface KafkajsOptions {
  readonly clientId: string;
  readonly brokers: readonly string[];
  readonly logger: Logger;
  /** TLS with a client certificate (see `kafkaTlsOf`); undefined connects in plaintext. */
  readonly tls?: KafkaTls | undefined;
}

/** kafkajs' `ssl` option for `tls` (undefined for plaintext): the broker's name is checked against its certificate. */
export function kafkajsSsl(tls: KafkaTls | undefined): ConnectionOptions | undefined {
  if (!tls) return undefined;
  return { ...(tls.ca === undefined ? {} : { ca: [tls.ca] }), cert: tls.cert, key: tls.key };
}

export interface KafkajsAdminOptions {
  readonly clientId: string;
  readonly brokers: readonly string[];
  readonly tls?: KafkaTls | undefined;
}

/**
 * A kafkajs admin client (topics, ACLs, offsets, groups), not yet connected, with the same
 * connection settings as the services' clients. Its own logs are off: callers report what fails.
 */
export function createKafkajsAdmin(options: KafkajsAdminOptions): Admin {
  const ssl = kafkajsSsl(options.tls);
  return new Kafka({ clientId: options.clientId, brokers: [...options.brokers], ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING }).admin();
}

/** The kafkajs implementation of the runtime's Kafka interface. */
export function createKafkajsClient(options: KafkajsOptions): KafkaClient {
  const log = options.logger.child({ component: 'kafkajs' });
  const kafka = new Kafka({
    clientId: options.clientId,
    brokers: [...options.brokers],
    ...(options.tls ? { ssl: kafkajsSsl(options.tls) } : {}),
    logLevel: kafkajsLogLevel(options.logger),
    logCreator: () => (entry) => {
      const { message, ...extra } = entry.log;
      // kafkajs logs protocol errors it retries itself (e.g. "not the leader" just after a topic is
      // created) as errors from its Connection; they are warnings unless the call fails, which the
      // caller then reports.
      const retried = entry.namespace === 'Connection';
      // Bounded retries are deliberate: a send that still fails is retried by its caller (the
      // outbox relay, the DLQ write), and consumers de-duplicate by event id (at-least-once).
      const expected = message === 'Limiting retries for the idempotent producer may invalidate EoS guarantees';
      const level = expected ? 'debug' : entry.level <= logLevel.ERROR && !retried ? 'error' : entry.level <= logLevel.WARN ? 'warn' : 'debug';
      log[level]({ namespace: entry.namespace, ...extra }, message);
    },
    retry: { initialRetryTime: 300, retries: 8 },
  });

  return {
    consumer: (consumerOptions) => kafkajsConsumer(kafka, consumerOptions),
    producer: () => kafkajsProducer(kafka),
    offsetReader: () => kafkajsOffsetReader(kafka),
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

const EMPTY = Buffer.alloc(0);

/** An outgoing record as kafkajs sends it: a repeated header key becomes an array (kafkajs writes one header per value, grouped by key). */
function toMessage(r: OutgoingRecord): Message {
  let headers: IHeaders | undefined = r.headers;
  if (r.headerList !== undefined) {
    const list: Record<string, Buffer[]> = {};
    // kafkajs cannot write a header without a value (Kafka allows one): it goes as empty bytes.
    for (const h of r.headerList) (list[h.key] ??= []).push(h.value ?? EMPTY);
    headers = list;
  }
  return { key: r.key, value: r.value, ...(headers !== undefined ? { headers } : {}), ...(r.partition !== undefined ? { partition: r.partition } : {}) };
}

function kafkajsConsumer(kafka: Kafka, options: ConsumerOptions): ConsumerClient {
  /**
   * Partitions this client sought and kafkajs may not have applied yet. `isStale()` costs a
   * JSON.stringify and a map lookup, so it is asked only for these: nothing else can seek (kafkajs
   * only sets a seek offset through `consumer.seek`), so for any other partition it is false.
   */
  const pendingSeeks = new Set<string>();
  const seekKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;
  const consumer: Consumer = kafka.consumer({
    groupId: options.groupId,
    sessionTimeout: options.sessionTimeoutMs ?? 30_000,
    heartbeatInterval: options.heartbeatIntervalMs ?? 3_000,
    maxBytesPerPartition: options.maxBytesPerPartition ?? 1_048_576,
    allowAutoTopicCreation: false,
    // An idle fetch returns after this long; a stopping consumer waits for its fetch, so a short
    // wait keeps shutdown quick (data still returns as soon as it arrives).
    maxWaitTimeInMs: options.maxWaitTimeMs ?? 500,
    ...(options.coPartitioned ? { partitionAssigners: [coPartitionedAssigner] } : {}),
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
          const { topic, partition } = batch;
          const key = seekKey(topic, partition);
          const isStale = () => {
            if (!pendingSeeks.has(key)) return false;
            if (payload.isStale()) return true;
            pendingSeeks.delete(key); // applied by kafkajs: the answer stays false until the next seek
            return false;
          };
          const lastHandled = await onBatch(
            new KafkajsBatch(topic, partition, batch.highWatermark, batch.messages),
            { isActive: () => payload.isRunning() && (pendingSeeks.size === 0 || !isStale()), heartbeat: () => payload.heartbeat() },
          );
          // Without this kafkajs fetches the unresolved part of the batch again.
          if (lastHandled !== undefined) payload.resolveOffset(lastHandled);
        },
      }),
    commit: (offsets) => consumer.commitOffsets(offsets.map((o) => ({ topic: o.topic, partition: o.partition, offset: o.offset }))),
    pause: (topic, partitions) => consumer.pause([partitions ? { topic, partitions: [...partitions] } : { topic }]),
    resume: (topic, partitions) => consumer.resume([partitions ? { topic, partitions: [...partitions] } : { topic }]),
    seek(topic, partition, offset) {
      pendingSeeks.add(seekKey(topic, partition));
      consumer.seek({ topic, partition, offset });
    },
    onAssignment(listener) {
      consumer.on(consumer.events.GROUP_JOIN, (event) => listener(event.payload.memberAssignment));
    },
    onRebalancing(listener) {
      consumer.on(consumer.events.REBALANCING, () => listener());
    },
    disconnect: () => consumer.disconnect(),
  };
}

/** ListOffsets through one admin connection, opened on first use. */
function kafkajsOffsetReader(kafka: Kafka): OffsetReader {
  let admin: Admin | undefined;
  let connecting: Promise<Admin> | undefined;
  const connected = () =>
    (connecting ??= (async () => {
      const client = kafka.admin();
      await client.connect();
      admin = client;
      return client;
    })().catch((error: unknown) => {
      connecting = undefined;
      throw error;
    }));
  return {
    async latest(topic) {
      const client = await connected();
      const offsets = await client.fetchTopicOffsets(topic);
      return new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
    },
    async committed(groupId, topic) {
      const client = await connected();
      const [entry] = await client.fetchOffsets({ groupId, topics: [topic] });
      const result = new Map<number, bigint>();
      for (const p of entry?.partitions ?? []) if (p.offset !== '-1' && p.offset !== '') result.set(p.partition, BigInt(p.offset));
      return result;
    },
    async close() {
      const client = admin;
      admin = undefined;
      connecting = undefined;
      if (client) await client.disconnect();
    },
  };
}

function kafkajsProducer(kafka: Kafka): ProducerClient {
  // Idempotent producer: no duplicates or reordering from the producer's own retries.
  const producer: Producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  return {
    connect: () => producer.connect(),
    async send(topic, records) {
      await producer.send({
        topic,
        acks: -1,
        messages: records.map(toMessage),
      });
    },
    async sendMany(batches) {
      await producer.sendBatch({
        acks: -1,
        topicMessages: batches.map((b) => ({ topic: b.topic, messages: b.records.map(toMessage) })),
      });
    },
    disconnect: () => producer.disconnect(),
  };
}
