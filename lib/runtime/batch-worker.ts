/**
 * The batch mode of the worker runtime: a handler gets the decoded records of one partition's Kafka
 * batch at once (so it can make one round trip to its store per batch), for one topic or several
 * consumed by one group (optionally co-partitioned: partition p of every topic in one member).
 *
 * The runtime keeps what `createWorker` does for records: offsets (committed at most every
 * `commitIntervalMs`, always on drain), pauses, retries with backoff, and dead letters. A record that
 * does not decode or validate goes to `<topic>.dlq` with the reason and the rest of its batch is
 * handled; a dependency outage (`unavailableDependency`) holds the partition and retries the batch
 * for as long as it takes, never dead-lettering; a batch whose handler keeps failing otherwise is
 * dead-lettered record by record once the attempts are spent. Handlers must be idempotent (a retried
 * or re-delivered batch is handled again).
 *
 * It also tells the service what it owns (`onAssignment`, `onRebalancing`) and how far it got in each
 * partition (`progress`): the next offset to handle, with the committed offset as the starting point
 * of a partition just assigned, so a caller comparing it with the log's end knows it is caught up.
 *
 * Opt-in, for handlers that make records durable later than they read them (the archiver buffers a
 * file's worth before uploading it):
 * - a handler may return `{ commitLimit }`: the worker keeps reading the partition past it but commits
 *   no further than min(handled, commitLimit), and the limit holds for later batches until raised
 *   (a batch whose records were all dead-lettered does not lift it);
 * - `commitUpTo(topic, partition, next)` raises the limit and commits outside a batch (an idle
 *   partition's last file cut by a timer); refused for a partition this member does not own;
 * - `rawRecords: true` gives each record's value bytes as produced (schema id and body) and its
 *   headers as an ordered list of bytes, for handlers that copy records byte-exact.
 */
import { NOT_CACHED, type AvroCodec } from '../kafka/avro.ts';
import type { BatchControl, ConsumerClient, KafkaClient, KafkaRecord, OffsetReader, OutgoingRecord, ProducerClient, RecordBatch, RecordHeader } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { errorCode, errorMessage, isRetryable, permanentError, unavailableDependency } from '../errors.ts';
import { deadLetterRecord, dlqTopicOf } from './dlq.ts';
import { FailureLedger } from './failures.ts';
import { PartitionOffsets } from './offsets.ts';
import { PauseTracker } from './pauses.ts';
import { settlesWithin } from './shutdown.ts';
import { batchedHistogram, type BatchedHistogram } from './batched-histogram.ts';
import { backoffDelayMs, DEFAULT_RETRY_POLICY, type RetryPolicy } from './retry.ts';

export interface DecodedRecord<Value> {
  readonly value: Value;
  readonly offset: string;
  readonly key: string | null;
  /** The record's Kafka timestamp (ms since the epoch, as a string). */
  readonly timestamp: string;
  /** The record as produced, with `rawRecords: true` (absent otherwise). */
  readonly raw?: RawRecord;
}

/** A record's bytes as they are on the topic. */
export interface RawRecord {
  /** The value as produced: the registry's framing (magic byte, schema id) and the Avro body. */
  readonly value: Buffer;
  readonly key: Buffer | null;
  /** In order; a key may repeat, a value may be absent. */
  readonly headers: readonly RecordHeader[];
}

/** The valid records of one partition's batch, in offset order (dead-lettered ones left out). */
export interface DecodedBatch<Value> {
  readonly topic: string;
  readonly partition: number;
  readonly highWatermark: string;
  readonly records: readonly DecodedRecord<Value>[];
  /** 1 on the first delivery, 2 after the batch failed once, … (dependency waits do not count). */
  readonly attempt: number;
}

export interface BatchContext<Deps> {
  readonly deps: Deps;
  readonly log: Logger;
}

/** What a handler may say about its batch (opt-in; returning nothing commits what was handled). */
export interface BatchResult {
  /**
   * The partition's commits go no further than this offset (the first record not durable yet), for
   * this and later batches until raised (by a later result or `commitUpTo`). Reading goes on past it.
   */
  readonly commitLimit?: bigint;
}

export type BatchHandler<Value, Deps> = (batch: DecodedBatch<Value>, ctx: BatchContext<Deps>) => Promise<void | BatchResult>;

/** Partitions per topic. */
export type TopicPartitions = Readonly<Record<string, readonly number[]>>;

export interface AssignmentChange {
  readonly assigned: TopicPartitions;
  readonly added: TopicPartitions;
  readonly revoked: TopicPartitions;
}

export interface PartitionProgress {
  /** The next offset to handle: every record below it is handled (by this member or a previous owner). */
  readonly next: bigint;
  /** The high watermark of the last batch handled (-1 before any). */
  readonly highWatermark: bigint;
}

export interface BatchWorkerOptions<Value, Deps> {
  readonly service: string;
  readonly topics: readonly string[];
  readonly groupId: string;
  readonly handler: BatchHandler<Value, Deps>;
  readonly deps: Deps;
  /** Checks a decoded value of `topic`; throw (a permanent error) to dead-letter it. Default: accept. */
  readonly validate?: (value: unknown, topic: string) => Value;
  /** Partition p of every topic to the same member (see ConsumerOptions.coPartitioned). */
  readonly coPartitioned?: boolean;
  /** Partitions processed at once (order is kept within each). Default 4. */
  readonly concurrency?: number;
  readonly retry?: Partial<RetryPolicy>;
  readonly fromBeginning?: boolean;
  readonly sessionTimeoutMs?: number;
  readonly heartbeatIntervalMs?: number;
  readonly maxWaitTimeMs?: number;
  /** Offsets are committed at most this often (and always on drain). Default 1000 ms. */
  readonly commitIntervalMs?: number;
  /** How long `stop` waits for the batches being handled. Default 10 s. */
  readonly drainWaitMs?: number;
  /** After every rebalance, before the new assignment's first batch is handled. */
  readonly onAssignment?: (change: AssignmentChange) => void;
  /** When a rebalance starts: what this member owns may be gone already. */
  readonly onRebalancing?: () => void;
  /** Each record's bytes as produced in `DecodedRecord.raw` (value, key, ordered headers). Default false. */
  readonly rawRecords?: boolean;
}

export interface BatchWorkerRuntime {
  readonly kafka: KafkaClient;
  readonly codec: AvroCodec;
  readonly producer: ProducerClient;
  readonly logger: Logger;
  readonly metrics: Metrics;
}

export type BatchWorkerState = 'INITIALIZED' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';

export interface BatchWorker {
  readonly topics: readonly string[];
  state(): BatchWorkerState;
  start(): Promise<void>;
  stop(): Promise<void>;
  pauseAll(reason: string): void;
  resumeAll(reason: string): void;
  assignment(): TopicPartitions;
  /** How far the partition is handled; undefined until known (just assigned, or not owned). */
  progress(topic: string, partition: number): PartitionProgress | undefined;
  /** The end of each partition's log now (ListOffsets), or undefined when the client cannot tell. */
  latestOffsets(topic: string): Promise<ReadonlyMap<number, bigint>> | undefined;
  /**
   * Raises the partition's commit limit to `next` (records below it are durable) and commits
   * min(next, handled position) now, outside a batch. WORKER_NOT_OWNER for a partition this member
   * does not own (it may have moved: its next owner starts from the last commit).
   */
  commitUpTo(topic: string, partition: number, next: bigint): Promise<void>;
}

interface TopicState {
  readonly pauses: PauseTracker;
  readonly offsets: PartitionOffsets;
  readonly failures: FailureLedger;
  readonly progress: Map<number, PartitionProgress>;
  /** agent_manager_handler_duration_seconds of this topic. */
  readonly handlerSeconds: BatchedHistogram;
  assigned: number[];
}

interface Invalid {
  readonly index: number;
  readonly error: unknown;
}

type Outcome = { readonly kind: 'done' } | { readonly kind: 'retry'; readonly delayMs: number };
const DONE: Outcome = { kind: 'done' };
const LOG_WAIT_EVERY = 10;

/** A record's bytes; headers from the client's ordered list, or (a client that has none) its string map. */
function rawOf(record: KafkaRecord, value: Buffer): RawRecord {
  const headers = record.headerList ?? Object.entries(record.headers).map(([key, v]) => ({ key, value: Buffer.from(v) }));
  return { value: Buffer.from(value), key: record.key === null ? null : Buffer.from(record.key), headers };
}

export function createBatchWorker<Value, Deps>(options: BatchWorkerOptions<Value, Deps>, runtime: BatchWorkerRuntime): BatchWorker {
  const { service, topics, handler, validate } = options;
  if (topics.length === 0) throw permanentError('WORKER_CONFIG', 'a batch worker needs at least one topic');
  const retryPolicy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  const log = runtime.logger.child({ topics: topics.join(','), groupId: options.groupId });
  const metrics = runtime.metrics;
  const codec = runtime.codec;
  const consumer: ConsumerClient = runtime.kafka.consumer({
    groupId: options.groupId,
    sessionTimeoutMs: options.sessionTimeoutMs,
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    maxWaitTimeMs: options.maxWaitTimeMs,
    coPartitioned: options.coPartitioned,
  });
  const offsetReader: OffsetReader | undefined = runtime.kafka.offsetReader?.();
  const ctx: BatchContext<Deps> = { deps: options.deps, log };

  let state: BatchWorkerState = 'INITIALIZED';
  let draining = false;
  let commitTimer: NodeJS.Timeout | undefined;
  const retryTimers = new Set<NodeJS.Timeout>();
  const inFlight = new Set<Promise<void>>();
  const drainWaitMs = options.drainWaitMs ?? 10_000;
  const commitIntervalMs = options.commitIntervalMs ?? 1_000;

  const byTopic = new Map<string, TopicState>();
  for (const topic of topics) {
    const entry: TopicState = {
      pauses: new PauseTracker(consumer, topic, () => state === 'RUNNING', () => metrics.pausedPartitions.set({ topic }, entry.pauses.pausedCount(entry.assigned.length))),
      offsets: new PartitionOffsets(consumer, topic, commitIntervalMs, log),
      failures: new FailureLedger(metrics.dependencyBlockedPartitions, topic),
      progress: new Map(),
      handlerSeconds: batchedHistogram(metrics.handlerSeconds, { topic }),
      assigned: [],
    };
    byTopic.set(topic, entry);
  }
  const topicState = (topic: string): TopicState => {
    const entry = byTopic.get(topic);
    if (!entry) throw permanentError('WORKER_STATE', `batch for ${topic}, which this worker does not consume`);
    return entry;
  };

  /** The progress of partitions just assigned starts at the group's committed offset (0 when none: the log's start). */
  async function seedProgress(topic: string, partitions: readonly number[]): Promise<void> {
    if (!offsetReader || partitions.length === 0) return;
    try {
      const committed = await offsetReader.committed(options.groupId, topic);
      const entry = topicState(topic);
      for (const partition of partitions) {
        if (!entry.assigned.includes(partition) || entry.progress.has(partition)) continue;
        entry.progress.set(partition, { next: committed.get(partition) ?? 0n, highWatermark: -1n });
      }
    } catch (error) {
      // Unknown until the partition's next batch: callers treat unknown as "not caught up".
      log.warn({ topic, partitions, err: errorMessage(error) }, 'reading committed offsets failed');
    }
  }

  function validated(decoded: unknown, topic: string): Value {
    if (validate === undefined) return decoded as Value;
    try {
      return validate(decoded, topic);
    } catch (error) {
      throw permanentError(errorCode(error) === 'UNEXPECTED' ? 'VALIDATION_FAILED' : errorCode(error), errorMessage(error), error);
    }
  }

  async function deadLetterAll(batch: RecordBatch, failed: readonly Invalid[], attempts: number): Promise<void> {
    const failedAt = new Date();
    const records: OutgoingRecord[] = failed.map(({ index, error }) =>
      deadLetterRecord(batch.recordAt(index), { code: errorCode(error), message: errorMessage(error), attempts, service, failedAt }),
    );
    await runtime.producer.send(dlqTopicOf(batch.topic), records);
    for (const { index, error } of failed) {
      const code = errorCode(error);
      metrics.recordsDeadLettered.inc({ topic: batch.topic, code });
      log.warn({ topic: batch.topic, partition: batch.partition, offset: batch.offsetAt(index), code, attempts, err: errorMessage(error) }, 'record dead-lettered');
    }
  }

  function scheduleRetry(topic: string, partition: number, offset: string, delayMs: number): void {
    const entry = topicState(topic);
    entry.pauses.pause(partition, 'retry');
    entry.offsets.rewind(partition, offset);
    const timer = setTimeout(() => {
      retryTimers.delete(timer);
      entry.pauses.resume(partition, 'retry');
    }, delayMs);
    retryTimers.add(timer);
  }

  function waitFor(entry: TopicState, topic: string, partition: number, offset: string, dependency: string, error: unknown): Outcome {
    const head = entry.failures.entryFor(partition, offset);
    head.waits++;
    const started = entry.failures.wait(partition, dependency);
    metrics.dependencyWaits.inc({ topic, dependency });
    const delayMs = backoffDelayMs(head.waits, { ...retryPolicy, maxDelayMs: retryPolicy.unavailableMaxDelayMs });
    if (started || head.waits % LOG_WAIT_EVERY === 0) {
      log.warn({ topic, partition, offset, dependency, waits: head.waits, delayMs, code: errorCode(error), err: errorMessage(error) }, 'dependency unavailable; holding the partition');
    }
    return { kind: 'retry', delayMs };
  }

  /** The batch (from `start`) failed as a whole: wait, retry after backoff, or dead-letter every record. */
  async function onBatchFailure(batch: RecordBatch, start: number, error: unknown, attempt: number, invalid: readonly Invalid[]): Promise<Outcome> {
    const { topic, partition } = batch;
    const entry = topicState(topic);
    const offset = batch.offsetAt(start);
    metrics.recordsFailed.inc({ topic, code: errorCode(error) });
    const dependency = unavailableDependency(error);
    if (dependency !== undefined) return waitFor(entry, topic, partition, offset, dependency, error);
    if (entry.failures.endWait(partition) !== undefined) log.info({ topic, partition }, 'dependency back');
    const head = entry.failures.entryFor(partition, offset);
    head.waits = 0;
    head.attempts = attempt;
    if (isRetryable(error) && attempt < retryPolicy.maxAttempts) {
      const delayMs = backoffDelayMs(attempt, retryPolicy);
      log.info({ topic, partition, offset, attempt, delayMs, code: errorCode(error), err: errorMessage(error) }, 'retrying batch after backoff');
      return { kind: 'retry', delayMs };
    }
    const invalidAt = new Map(invalid.map((i) => [i.index, i.error]));
    const all: Invalid[] = [];
    for (let index = start; index < batch.size; index++) all.push({ index, error: invalidAt.get(index) ?? error });
    try {
      await deadLetterAll(batch, all, attempt);
    } catch (dlqError) {
      return waitFor(entry, topic, partition, offset, 'kafka', dlqError);
    }
    entry.failures.clear(partition);
    return DONE;
  }

  async function processBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    const { topic, partition } = batch;
    const entry = topicState(topic);
    if (draining || !control.isActive() || (entry.pauses.anyPaused() && entry.pauses.isPaused(partition))) return undefined;
    // Records below the position were handled, or wait for their retry (a fetch from before a seek).
    const position = entry.offsets.position(partition);
    let start = 0;
    if (position !== undefined) while (start < batch.size && BigInt(batch.offsetAt(start)) < position) start++;
    if (start >= batch.size) return undefined;
    const head = entry.failures.head(partition);
    const attempt = head !== undefined && head.offset === batch.offsetAt(start) ? head.attempts + 1 : 1;
    const records: DecodedRecord<Value>[] = [];
    const invalid: Invalid[] = [];
    let outcome: Outcome = DONE;
    try {
      for (let index = start; index < batch.size; index++) {
        try {
          const buffer = batch.valueAt(index);
          if (buffer === null) throw permanentError('DECODE_EMPTY_VALUE', 'record has no value (tombstone)');
          let decoded = codec.decodeCached === undefined ? NOT_CACHED : codec.decodeCached(buffer);
          if (decoded === NOT_CACHED) decoded = await codec.decode(buffer);
          const record = batch.recordAt(index);
          const value = validated(decoded, topic);
          const key = record.key === null ? null : record.key.toString();
          records.push(options.rawRecords === true ? { value, offset: record.offset, key, timestamp: record.timestamp, raw: rawOf(record, buffer) } : { value, offset: record.offset, key, timestamp: record.timestamp });
        } catch (error) {
          // The registry being down is no fault of the record: the whole batch waits for it.
          if (unavailableDependency(error) !== undefined) throw error;
          metrics.recordsFailed.inc({ topic, code: errorCode(error) });
          invalid.push({ index, error });
        }
      }
      if (records.length > 0) {
        const started = performance.now();
        const result = await handler({ topic, partition, highWatermark: batch.highWatermark, records, attempt }, ctx);
        // The handler latency per record (dashboard, canary analysis): each record's share of its batch.
        const perRecord = (performance.now() - started) / 1000 / records.length;
        for (let i = 0; i < records.length; i++) entry.handlerSeconds.observe(perRecord);
        entry.handlerSeconds.flush();
        if (result?.commitLimit !== undefined) entry.offsets.limit(partition, result.commitLimit);
      }
      if (invalid.length > 0) {
        try {
          await deadLetterAll(batch, invalid, 1);
        } catch (dlqError) {
          outcome = waitFor(entry, topic, partition, batch.offsetAt(start), 'kafka', dlqError);
        }
      }
    } catch (error) {
      outcome = await onBatchFailure(batch, start, error, attempt, invalid);
    }
    if (outcome.kind === 'retry') {
      scheduleRetry(topic, partition, batch.offsetAt(start), outcome.delayMs);
      return undefined;
    }
    if (entry.failures.head(partition) !== undefined) {
      if (entry.failures.endWait(partition) !== undefined) log.info({ topic, partition }, 'dependency back');
      entry.failures.clear(partition);
    }
    if (records.length > 0) metrics.recordsProcessed.inc({ topic }, records.length);
    const last = batch.offsetAt(batch.size - 1);
    const next = BigInt(last) + 1n;
    entry.offsets.handled(partition, next, false);
    const highWatermark = BigInt(batch.highWatermark);
    entry.progress.set(partition, { next, highWatermark });
    metrics.consumerLag.set({ topic, partition: String(partition) }, Math.max(0, Number(highWatermark - next)));
    if (draining || entry.offsets.commitDue()) await entry.offsets.flush();
    return last;
  }

  const settled = () => undefined;
  function onBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    if (draining) return Promise.resolve(undefined);
    const work = processBatch(batch, control);
    const tracked = work.then(settled, settled);
    inFlight.add(tracked);
    return work.finally(() => inFlight.delete(tracked));
  }

  const flushAll = async () => {
    for (const entry of byTopic.values()) await entry.offsets.flush();
  };

  return {
    topics,
    state: () => state,
    assignment: () => Object.fromEntries([...byTopic.entries()].map(([topic, entry]) => [topic, entry.assigned])),
    progress: (topic, partition) => byTopic.get(topic)?.progress.get(partition),
    latestOffsets: (topic) => offsetReader?.latest(topic),
    async commitUpTo(topic, partition, next) {
      const entry = byTopic.get(topic);
      if (entry === undefined || !entry.assigned.includes(partition)) throw permanentError('WORKER_NOT_OWNER', `${topic}[${partition}] is not owned by this member`);
      // Never past what was handled: the position, else the progress seeded from the group's commit.
      const handledUpTo = entry.offsets.position(partition) ?? entry.progress.get(partition)?.next;
      entry.offsets.limit(partition, next, handledUpTo);
      if (handledUpTo !== undefined) await entry.offsets.flush();
    },
    async start() {
      if (state !== 'INITIALIZED') throw permanentError('WORKER_STATE', `batch worker cannot start from ${state}`);
      consumer.onRebalancing?.(() => options.onRebalancing?.());
      consumer.onAssignment((assignment) => {
        const added: Record<string, number[]> = {};
        const revoked: Record<string, number[]> = {};
        for (const [topic, entry] of byTopic) {
          const now = assignment[topic] ?? [];
          added[topic] = now.filter((p) => !entry.assigned.includes(p));
          revoked[topic] = entry.assigned.filter((p) => !now.includes(p));
          entry.assigned = now;
          entry.failures.reassigned(now);
          entry.offsets.reassigned(now);
          // Positions are re-read from Kafka: progress too (from the committed offsets, then batches).
          entry.progress.clear();
          void seedProgress(topic, now);
        }
        log.info({ assignment }, 'partitions assigned');
        try {
          options.onAssignment?.({ assigned: Object.fromEntries([...byTopic.entries()].map(([t, e]) => [t, e.assigned])), added, revoked });
        } catch (error) {
          log.error({ err: errorMessage(error) }, 'assignment listener failed');
        }
      });
      try {
        await consumer.connect();
        await consumer.subscribe(topics, options.fromBeginning ?? true);
        state = 'RUNNING';
        await consumer.run({ concurrency: options.concurrency ?? 4, onBatch });
        commitTimer = setInterval(() => void flushAll(), commitIntervalMs);
        for (const [topic, entry] of byTopic) if (entry.pauses.topicPaused()) consumer.pause(topic);
        log.info({ concurrency: options.concurrency ?? 4 }, 'batch worker running');
      } catch (error) {
        state = 'FAILED';
        throw error;
      }
    },
    async stop() {
      if (state === 'STOPPED' || state === 'STOPPING') return;
      state = 'STOPPING';
      draining = true;
      for (const timer of retryTimers) clearTimeout(timer);
      retryTimers.clear();
      for (const entry of byTopic.values()) entry.failures.endAllWaits();
      try {
        for (const topic of topics) {
          try {
            consumer.pause(topic);
          } catch {
            // not running
          }
        }
        clearInterval(commitTimer);
        const drained = await settlesWithin(Promise.allSettled([...inFlight]), drainWaitMs);
        if (!drained) log.warn({ waitedMs: drainWaitMs, batches: inFlight.size }, 'in-flight batches did not finish in time; leaving them uncommitted');
        // Each bounded: a drain must end even if Kafka does not answer (the group's session timeout
        // then moves the partitions, and uncommitted records are consumed again: at least once).
        if (!(await settlesWithin(flushAll(), drainWaitMs))) log.warn({ waitedMs: drainWaitMs }, 'committing offsets did not finish in time');
        if (!(await settlesWithin(consumer.disconnect(), drainWaitMs))) log.warn({ waitedMs: drainWaitMs }, 'the Kafka consumer did not disconnect in time; leaving it');
        await settlesWithin(offsetReader?.close().catch(() => undefined) ?? Promise.resolve(), drainWaitMs);
      } finally {
        state = 'STOPPED';
        log.info('batch worker stopped');
      }
    },
    pauseAll(reason) {
      for (const entry of byTopic.values()) entry.pauses.pauseAll(reason);
      log.info({ reason }, 'all partitions paused');
    },
    resumeAll(reason) {
      for (const entry of byTopic.values()) entry.pauses.resumeAll(reason);
      log.info({ reason }, 'partitions resumed');
    },
  };
}

