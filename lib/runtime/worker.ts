import type { AvroCodec } from '../kafka/avro.ts';
import type { BatchControl, ConsumerClient, Headers, KafkaClient, KafkaRecord, ProducerClient, RecordBatch } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { childTrace, parseTraceparent, type TraceContext } from '../tracing.ts';
import { errorCode, errorMessage, isRetryable, permanentError } from '../errors.ts';
import { deadLetterRecord, dlqTopicOf } from './dlq.ts';
import { backoffDelayMs, DEFAULT_RETRY_POLICY, type RetryPolicy } from './retry.ts';

/** What a handler gets besides the decoded value. It never sees a Kafka client. */
export interface MessageContext<Deps> {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly headers: Headers;
  readonly timestamp: string;
  /** 1 on the first delivery to the handler, 2 on the first retry, … */
  readonly attempt: number;
  readonly trace: TraceContext;
  /** A logger carrying service, traceId and the record's key (the agentId). */
  readonly log: Logger;
  readonly deps: Deps;
}

export type Handler<Value, Deps> = (value: Value, ctx: MessageContext<Deps>) => Promise<void>;

export interface WorkerOptions<Value, Deps> {
  /** The service's name: in logs, metrics and DLQ headers. */
  readonly service: string;
  readonly topic: string;
  readonly groupId: string;
  readonly handler: Handler<Value, Deps>;
  readonly deps: Deps;
  /** Checks the decoded value; throw (a permanent error) to dead-letter it. Default: accept. */
  readonly validate?: (value: unknown) => Value;
  /** Partitions processed at once (order is kept within each). Default 4. */
  readonly concurrency?: number;
  readonly retry?: Partial<RetryPolicy>;
  /** Start from the earliest offset when the group has none committed. Default true. */
  readonly fromBeginning?: boolean;
  readonly sessionTimeoutMs?: number;
  /**
   * Offsets are committed at most this often (and always on drain): one commit per batch costs a
   * round trip per batch. A crash re-delivers at most this window (handlers are idempotent). Default 1000 ms.
   */
  readonly commitIntervalMs?: number;
}

export interface WorkerRuntimeDeps {
  readonly kafka: KafkaClient;
  readonly codec: AvroCodec;
  /** Used for dead-letter records. */
  readonly producer: ProducerClient;
  readonly logger: Logger;
  readonly metrics: Metrics;
}

export type WorkerState = 'INITIALIZED' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';

export interface Worker {
  readonly topic: string;
  state(): WorkerState;
  start(): Promise<void>;
  /** Stops fetching, lets in-flight records finish and commits them, then leaves the group. */
  stop(): Promise<void>;
  /** Pauses every partition for `reason` (e.g. safe mode); records wait in Kafka. */
  pauseAll(reason: string): void;
  resumeAll(reason: string): void;
  /** Partitions owned after the last rebalance. */
  assignment(): readonly number[];
}

/** The handler's context; a class so that per-record laziness costs no closures. */
class RecordContext<Deps> implements MessageContext<Deps> {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly headers: Headers;
  readonly timestamp: string;
  readonly attempt: number;
  readonly deps: Deps;
  #workerLog: Logger;
  #trace: TraceContext | undefined;
  #log: Logger | undefined;

  constructor(record: KafkaRecord, attempt: number, workerLog: Logger, deps: Deps) {
    this.topic = record.topic;
    this.partition = record.partition;
    this.offset = record.offset;
    this.key = record.key === null ? null : record.key.toString();
    this.headers = record.headers;
    this.timestamp = record.timestamp;
    this.attempt = attempt;
    this.deps = deps;
    this.#workerLog = workerLog;
  }

  // Trace and logger are built on first use: most records need neither.
  get trace(): TraceContext {
    return (this.#trace ??= childTrace(parseTraceparent(this.headers.traceparent)));
  }

  get log(): Logger {
    return (this.#log ??= this.#workerLog.child({ agentId: this.key ?? undefined, traceId: this.trace.traceId, partition: this.partition, offset: this.offset }));
  }
}

type Outcome = { readonly kind: 'done' } | { readonly kind: 'retry'; readonly delayMs: number };
const DONE: Outcome = { kind: 'done' };
const HEARTBEAT_EVERY_MS = 1_000;

const nextOffset = (offset: string) => (BigInt(offset) + 1n).toString();

export function createWorker<Value, Deps>(options: WorkerOptions<Value, Deps>, runtime: WorkerRuntimeDeps): Worker {
  const { topic, service } = options;
  const retryPolicy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  const log = runtime.logger.child({ topic, groupId: options.groupId });
  const metrics = runtime.metrics;
  // Label children bound once: the hot path skips label hashing.
  const handlerSeconds = metrics.handlerSeconds.labels(topic);
  const recordsProcessed = metrics.recordsProcessed.labels(topic);
  const consumer: ConsumerClient = runtime.kafka.consumer({ groupId: options.groupId, sessionTimeoutMs: options.sessionTimeoutMs });
  const validate = options.validate ?? ((value: unknown) => value as Value);

  let state: WorkerState = 'INITIALIZED';
  let assigned: number[] = [];
  /** Failed attempts of the record at the head of a partition, by partition. */
  const failures = new Map<number, { offset: string; attempts: number }>();
  /** Why each partition is paused; fetching resumes only when no reason is left. */
  const pauseReasons = new Map<number, Set<string>>();
  const topicPauseReasons = new Set<string>();
  const retryTimers = new Set<NodeJS.Timeout>();
  /**
   * Next offset to process, by partition. A fetch made before a seek can still arrive; records
   * below this position were already handled (or are waiting for their retry) and are skipped.
   */
  const positions = new Map<number, bigint>();
  /** Batches being processed: a drain waits for them, while the client is still in the group, so their commits land. */
  const inFlight = new Set<Promise<void>>();
  let draining = false;
  /** Offsets handled but not yet committed, by partition. */
  const pendingCommits = new Map<number, string>();
  const commitIntervalMs = options.commitIntervalMs ?? 1_000;
  let lastCommitAt = Date.now();
  let commitTimer: NodeJS.Timeout | undefined;

  async function flushCommits(): Promise<void> {
    lastCommitAt = Date.now();
    if (pendingCommits.size === 0) return;
    const offsets = [...pendingCommits.entries()].map(([partition, offset]) => ({ topic, partition, offset }));
    pendingCommits.clear();
    try {
      await consumer.commit(offsets);
    } catch (error) {
      // A rebalance took a partition: its next owner re-reads from the last commit (at-least-once).
      log.warn({ offsets, err: errorMessage(error) }, 'offset commit failed');
    }
  }

  const isPaused = (partition: number) => topicPauseReasons.size > 0 || (pauseReasons.get(partition)?.size ?? 0) > 0;
  const updatePausedGauge = () =>
    metrics.pausedPartitions.set({ topic }, topicPauseReasons.size > 0 ? assigned.length : [...pauseReasons.values()].filter((r) => r.size > 0).length);

  function pausePartition(partition: number, reason: string) {
    let reasons = pauseReasons.get(partition);
    if (!reasons) pauseReasons.set(partition, (reasons = new Set()));
    reasons.add(reason);
    consumer.pause(topic, [partition]);
    updatePausedGauge();
  }

  function resumePartition(partition: number, reason: string) {
    const reasons = pauseReasons.get(partition);
    reasons?.delete(reason);
    if (state === 'RUNNING' && !isPaused(partition)) consumer.resume(topic, [partition]);
    updatePausedGauge();
  }

  async function deadLetter(record: KafkaRecord, error: unknown, attempts: number): Promise<void> {
    const code = errorCode(error);
    await runtime.producer.send(dlqTopicOf(topic), [
      deadLetterRecord(record, { code, message: errorMessage(error), attempts, service, failedAt: new Date() }),
    ]);
    metrics.recordsDeadLettered.inc({ topic, code });
    log.warn({ partition: record.partition, offset: record.offset, code, attempts, err: errorMessage(error) }, 'record dead-lettered');
  }

  async function processRecord(record: KafkaRecord): Promise<Outcome> {
    const previous = failures.get(record.partition);
    const attempt = previous?.offset === record.offset ? previous.attempts + 1 : 1;
    const started = performance.now();
    try {
      if (record.value === null) throw permanentError('DECODE_EMPTY_VALUE', 'record has no value (tombstone)');
      const decoded = await runtime.codec.decode(record.value);
      let value: Value;
      try {
        value = validate(decoded);
      } catch (error) {
        throw permanentError(errorCode(error) === 'UNEXPECTED' ? 'VALIDATION_FAILED' : errorCode(error), errorMessage(error), error);
      }
      const ctx = new RecordContext<Deps>(record, attempt, log, options.deps);
      await options.handler(value, ctx);
      handlerSeconds.observe((performance.now() - started) / 1000);
      recordsProcessed.inc();
      if (previous) failures.delete(record.partition);
      return DONE;
    } catch (error) {
      metrics.recordsFailed.inc({ topic, code: errorCode(error) });
      if (isRetryable(error) && attempt < retryPolicy.maxAttempts) {
        failures.set(record.partition, { offset: record.offset, attempts: attempt });
        const delayMs = backoffDelayMs(attempt, retryPolicy);
        log.info({ partition: record.partition, offset: record.offset, attempt, delayMs, code: errorCode(error), err: errorMessage(error) }, 'retrying record after backoff');
        return { kind: 'retry', delayMs };
      }
      failures.delete(record.partition);
      await deadLetter(record, error, attempt);
      return DONE;
    }
  }

  /** Pauses the partition, rewinds it to the failed record and resumes it after the delay. */
  function scheduleRetry(record: KafkaRecord, delayMs: number) {
    pausePartition(record.partition, 'retry');
    positions.set(record.partition, BigInt(record.offset));
    consumer.seek(topic, record.partition, record.offset);
    const timer = setTimeout(() => {
      retryTimers.delete(timer);
      resumePartition(record.partition, 'retry');
    }, delayMs);
    retryTimers.add(timer);
  }

  function onBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    if (draining) return Promise.resolve(undefined);
    const work = processBatch(batch, control);
    const tracked = work.then(() => undefined);
    inFlight.add(tracked);
    return work.finally(() => inFlight.delete(tracked));
  }

  async function processBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    let lastHandled: string | undefined;
    let lastHeartbeat = Date.now();
    for (const record of batch.records) {
      if (draining || !control.isActive() || isPaused(batch.partition)) break;
      const offset = BigInt(record.offset);
      const position = positions.get(batch.partition);
      if (position !== undefined && offset < position) continue;
      let outcome: Outcome;
      try {
        outcome = await processRecord(record);
      } catch (error) {
        // Only the DLQ write can fail here: keep the record and try again later.
        log.error({ partition: record.partition, offset: record.offset, err: errorMessage(error) }, 'dead-lettering failed; will retry');
        outcome = { kind: 'retry', delayMs: backoffDelayMs(1, retryPolicy) };
      }
      if (outcome.kind === 'retry') {
        scheduleRetry(record, outcome.delayMs);
        break;
      }
      lastHandled = record.offset;
      positions.set(batch.partition, offset + 1n);
      if (Date.now() - lastHeartbeat > HEARTBEAT_EVERY_MS) {
        lastHeartbeat = Date.now();
        await control.heartbeat().catch(() => undefined);
      }
    }
    if (lastHandled !== undefined) {
      const committable = nextOffset(lastHandled);
      pendingCommits.set(batch.partition, committable);
      if (draining || Date.now() - lastCommitAt >= commitIntervalMs) await flushCommits();
      metrics.consumerLag.set({ topic, partition: String(batch.partition) }, Math.max(0, Number(BigInt(batch.highWatermark) - BigInt(committable))));
    }
    return lastHandled;
  }

  return {
    topic,
    state: () => state,
    assignment: () => assigned,
    async start() {
      if (state !== 'INITIALIZED') throw permanentError('WORKER_STATE', `worker for ${topic} cannot start from ${state}`);
      consumer.onAssignment((assignment) => {
        assigned = assignment[topic] ?? [];
        failures.clear();
        positions.clear();
        // Offsets of partitions this member no longer owns cannot be committed by it.
        for (const partition of pendingCommits.keys()) if (!assigned.includes(partition)) pendingCommits.delete(partition);
        log.info({ partitions: assigned }, 'partitions assigned');
      });
      try {
        await consumer.connect();
        await consumer.subscribe([topic], options.fromBeginning ?? true);
        state = 'RUNNING';
        await consumer.run({ concurrency: options.concurrency ?? 4, onBatch });
        commitTimer = setInterval(() => void flushCommits(), commitIntervalMs);
        if (topicPauseReasons.size > 0) consumer.pause(topic);
        log.info({ concurrency: options.concurrency ?? 4 }, 'worker running');
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
      try {
        // Stop fetching, let each in-flight batch finish its current record and commit, then leave.
        consumer.pause(topic);
        clearInterval(commitTimer);
        await Promise.allSettled([...inFlight]);
        await flushCommits();
        await consumer.disconnect();
      } finally {
        state = 'STOPPED';
        log.info('worker stopped');
      }
    },
    pauseAll(reason) {
      topicPauseReasons.add(reason);
      if (state === 'RUNNING') consumer.pause(topic);
      updatePausedGauge();
      log.info({ reason }, 'all partitions paused');
    },
    resumeAll(reason) {
      topicPauseReasons.delete(reason);
      if (state === 'RUNNING' && topicPauseReasons.size === 0) {
        const stillPaused = [...pauseReasons.entries()].filter(([, r]) => r.size > 0).map(([p]) => p);
        consumer.resume(topic);
        if (stillPaused.length > 0) consumer.pause(topic, stillPaused);
      }
      updatePausedGauge();
      log.info({ reason }, 'partitions resumed');
    },
  };
}
