import { context, trace, type Context, type Span } from '@opentelemetry/api';
import { NOT_CACHED, type AvroCodec } from '../kafka/avro.ts';
import type { BatchControl, ConsumerClient, Headers, KafkaClient, KafkaRecord, ProducerClient, RecordBatch } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { childTrace, parseTraceparent, type TraceContext } from '../tracing.ts';
import { contextWithParent, recordSpanError, SpanKind, telemetryActive, traceOfSpan, tracer } from '../telemetry.ts';
import { errorCode, errorMessage, isRetryable, permanentError, unavailableDependency } from '../errors.ts';
import { batchedHistogram, RecordTimer } from './batched-histogram.ts';
import { deadLetterRecord, dlqTopicOf } from './dlq.ts';
import { FailureLedger, type HeadFailure } from './failures.ts';
import { PartitionOffsets } from './offsets.ts';
import { PauseTracker } from './pauses.ts';
import { settlesWithin } from './shutdown.ts';
import { backoffDelayMs, DEFAULT_RETRY_POLICY, type RetryPolicy } from './retry.ts';

/** What a handler gets besides the decoded value. It never sees a Kafka client. */
export interface MessageContext<Deps> {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly headers: Headers;
  readonly timestamp: string;
  /**
   * 1 on the first delivery to the handler, 2 after the record failed once, … Retries while a
   * dependency was down do not count (they never lead to the DLQ).
   */
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
  /** How long `stop` waits for the records being handled before leaving them uncommitted. Default 10 s. */
  readonly drainWaitMs?: number;
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

/** What every record context of one worker shares (one object, so a context stays small). */
interface ContextScope<Deps> {
  readonly deps: Deps;
  readonly log: Logger;
}

/** What a context makes on first use. */
interface LazyParts {
  record?: KafkaRecord;
  span?: Span;
  key?: string | null;
  trace?: TraceContext;
  log?: Logger;
}

/**
 * The handler's context; a class so that per-record laziness costs no closures. It reads the
 * record from its batch by index and makes the full record, key, trace and logger only when they
 * are read: a context is five fields, and most records need none of the rest.
 */
class RecordContext<Deps> implements MessageContext<Deps> {
  readonly attempt: number;
  #scope: ContextScope<Deps>;
  #batch: RecordBatch;
  #index: number;
  #lazy: LazyParts | undefined;

  constructor(scope: ContextScope<Deps>, batch: RecordBatch, index: number, attempt: number, lazy: LazyParts | undefined) {
    this.#scope = scope;
    this.#batch = batch;
    this.#index = index;
    this.attempt = attempt;
    this.#lazy = lazy;
  }

  get deps(): Deps {
    return this.#scope.deps;
  }

  get topic(): string {
    return this.#batch.topic;
  }

  get partition(): number {
    return this.#batch.partition;
  }

  get offset(): string {
    return this.#batch.offsetAt(this.#index);
  }

  get #parts(): LazyParts {
    return (this.#lazy ??= {});
  }

  /** The full record, made on first use. */
  get #record(): KafkaRecord {
    const parts = this.#parts;
    return (parts.record ??= this.#batch.recordAt(this.#index));
  }

  get timestamp(): string {
    return this.#record.timestamp;
  }

  get key(): string | null {
    const parts = this.#parts;
    if (parts.key === undefined) {
      const key = this.#record.key;
      parts.key = key === null ? null : key.toString();
    }
    return parts.key;
  }

  get headers(): Headers {
    return this.#record.headers;
  }

  /** The `handle` span's context when tracing is on (so logs and spans agree), else a child of the record's `traceparent`. */
  get trace(): TraceContext {
    const parts = this.#parts;
    return (parts.trace ??= parts.span ? traceOfSpan(parts.span) : childTrace(parseTraceparent(this.headers.traceparent)));
  }

  get log(): Logger {
    const parts = this.#parts;
    return (parts.log ??= this.#scope.log.child({ agentId: this.key ?? undefined, traceId: this.trace.traceId, partition: this.partition, offset: this.offset }));
  }
}

/** The `handle` span of the record being processed, with the context it runs in. */
interface HandleSpan {
  readonly span: Span;
  readonly parent: Context;
  readonly record: KafkaRecord;
}

/**
 * Where one batch's run stands. The loop keeps its state here rather than in locals: every local
 * that is live across an `await` is saved and restored on each of them, i.e. on every record.
 */
class BatchRun {
  readonly batch: RecordBatch;
  readonly control: BatchControl;
  readonly partition: number;
  readonly size: number;
  readonly consumeSpan: Span | undefined;
  /** The record being processed. */
  index = 0;
  /** Records below this offset were already handled (a fetch from before a seek) and are skipped. */
  skipBelow: bigint | undefined;
  /** Failures of the record at the head of the partition, if its last attempt failed. */
  failure: HeadFailure | undefined;
  attempt = 1;
  handle: HandleSpan | undefined = undefined;
  /** Index of the last record handled or dead-lettered (its offset is read once, at the end). */
  lastIndex = -1;
  handled = 0;
  retried = false;
  /** Handler latencies, with few clock reads. */
  readonly timer: RecordTimer;
  lastHeartbeat: number;

  constructor(batch: RecordBatch, control: BatchControl, consumeSpan: Span | undefined, skipBelow: bigint | undefined, failure: BatchRun['failure'], timer: RecordTimer) {
    this.batch = batch;
    this.control = control;
    this.partition = batch.partition;
    this.size = batch.size;
    this.consumeSpan = consumeSpan;
    this.skipBelow = skipBelow;
    this.failure = failure;
    this.timer = timer;
    timer.start();
    this.lastHeartbeat = timer.mark;
  }
}

/** What `startRecord` returns when the batch stops here, or when the record is skipped. */
const STOP: unique symbol = Symbol('stop');
const SKIPPED: unique symbol = Symbol('skipped');
const NO_ERROR: unique symbol = Symbol('no error');

type Outcome = { readonly kind: 'done' } | { readonly kind: 'retry'; readonly delayMs: number };
const DONE: Outcome = { kind: 'done' };
const HEARTBEAT_EVERY_MS = 1_000;
/** A dependency wait is logged at its start, then every this many retries (a long outage stays readable). */
const LOG_WAIT_EVERY = 10;

export function createWorker<Value, Deps>(options: WorkerOptions<Value, Deps>, runtime: WorkerRuntimeDeps): Worker {
  const { topic, service } = options;
  const retryPolicy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  const log = runtime.logger.child({ topic, groupId: options.groupId });
  const metrics = runtime.metrics;
  // Per-record latencies are merged into the histogram once per batch; counters move once per batch.
  const handlerSeconds = batchedHistogram(metrics.handlerSeconds, { topic });
  const firstBound = handlerSeconds.firstBound;
  const recordsProcessed = metrics.recordsProcessed.labels(topic);
  const consumer: ConsumerClient = runtime.kafka.consumer({ groupId: options.groupId, sessionTimeoutMs: options.sessionTimeoutMs });
  const { handler, validate } = options;
  const scope: ContextScope<Deps> = { deps: options.deps, log };
  const codec = runtime.codec;

  let state: WorkerState = 'INITIALIZED';
  let assigned: number[] = [];
  const failures = new FailureLedger(metrics.dependencyBlockedPartitions, topic);
  const updatePausedGauge = () => metrics.pausedPartitions.set({ topic }, pauses.pausedCount(assigned.length));
  const pauses = new PauseTracker(consumer, topic, () => state === 'RUNNING', updatePausedGauge);
  const offsets = new PartitionOffsets(consumer, topic, options.commitIntervalMs ?? 1_000, log);
  const retryTimers = new Set<NodeJS.Timeout>();
  /** Batches being processed: a drain waits for them, while the client is still in the group, so their commits land. */
  const inFlight = new Set<Promise<void>>();
  let draining = false;
  let commitTimer: NodeJS.Timeout | undefined;
  const drainWaitMs = options.drainWaitMs ?? 10_000;

  async function deadLetter(record: KafkaRecord, error: unknown, attempts: number): Promise<void> {
    const code = errorCode(error);
    await runtime.producer.send(dlqTopicOf(topic), [
      deadLetterRecord(record, { code, message: errorMessage(error), attempts, service, failedAt: new Date() }),
    ]);
    metrics.recordsDeadLettered.inc({ topic, code });
    log.warn({ partition: record.partition, offset: record.offset, code, attempts, err: errorMessage(error) }, 'record dead-lettered');
  }

  function validated(decoded: unknown): Value {
    if (validate === undefined) return decoded as Value;
    try {
      return validate(decoded);
    } catch (error) {
      throw permanentError(errorCode(error) === 'UNEXPECTED' ? 'VALIDATION_FAILED' : errorCode(error), errorMessage(error), error);
    }
  }

  /**
   * A record that failed decoding, validation or its handler: retried later (its partition rewinds)
   * or dead-lettered now. A dependency being down is not the record's fault: the partition waits
   * for it (capped backoff, for as long as it takes) and the DLQ budget is left alone.
   */
  async function onFailure(record: KafkaRecord, error: unknown, attempt: number): Promise<Outcome> {
    const code = errorCode(error);
    metrics.recordsFailed.inc({ topic, code });
    const partition = record.partition;
    const entry = failures.entryFor(partition, record.offset);
    const dependency = unavailableDependency(error);
    if (dependency !== undefined) return waitFor(dependency, record, entry, error);
    const waited = failures.endWait(partition);
    if (waited !== undefined) log.info({ partition, dependency: waited }, 'dependency back');
    entry.waits = 0;
    entry.attempts = attempt;
    if (entry.deadLetterPending === undefined && isRetryable(error) && attempt < retryPolicy.maxAttempts) {
      const delayMs = backoffDelayMs(attempt, retryPolicy);
      log.info({ partition, offset: record.offset, attempt, delayMs, code, err: errorMessage(error) }, 'retrying record after backoff');
      return { kind: 'retry', delayMs };
    }
    try {
      await deadLetter(record, error, attempt);
    } catch (dlqError) {
      // Kept (not committed) with its count: the next delivery goes straight to the DLQ once Kafka answers.
      entry.deadLetterPending = error instanceof Error ? error : new Error(String(error));
      log.error({ partition, offset: record.offset, err: errorMessage(dlqError) }, 'dead-lettering failed; will retry');
      return waitFor('kafka', record, entry, dlqError);
    }
    failures.clear(partition);
    return DONE;
  }

  /** Holds the partition until `dependency` answers: readiness fails (the gauge) and the wait is counted. */
  function waitFor(dependency: string, record: KafkaRecord, entry: HeadFailure, error: unknown): Outcome {
    entry.waits++;
    const started = failures.wait(record.partition, dependency);
    metrics.dependencyWaits.inc({ topic, dependency });
    const delayMs = backoffDelayMs(entry.waits, { ...retryPolicy, maxDelayMs: retryPolicy.unavailableMaxDelayMs });
    if (started || entry.waits % LOG_WAIT_EVERY === 0) {
      log.warn({ partition: record.partition, offset: record.offset, dependency, waits: entry.waits, delayMs, code: errorCode(error), err: errorMessage(error) }, 'dependency unavailable; holding the partition');
    }
    return { kind: 'retry', delayMs };
  }

  /** The `handle` span of a record: its parent is the record's `traceparent` (linked to the batch's `consume` span), else the `consume` span. */
  function startHandleSpan(record: KafkaRecord, consumeSpan: Span, attempt: number): HandleSpan {
    const remote = parseTraceparent(record.headers.traceparent);
    const consumeContext = trace.setSpan(context.active(), consumeSpan);
    const parent = contextWithParent(remote, consumeContext);
    const span = tracer().startSpan(
      'handle',
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'messaging.system': 'kafka',
          'messaging.operation.type': 'process',
          'messaging.destination.name': topic,
          'messaging.destination.partition.id': String(record.partition),
          'messaging.kafka.offset': Number(record.offset),
          'messaging.consumer.group.name': options.groupId,
          'agent_manager.attempt': attempt,
        },
        links: remote === undefined ? undefined : [{ context: consumeSpan.spanContext() }],
      },
      parent,
    );
    return { span, parent, record };
  }

  /** Pauses the partition, rewinds it to the failed record and resumes it after the delay. */
  function scheduleRetry(record: KafkaRecord, delayMs: number) {
    pauses.pause(record.partition, 'retry');
    offsets.rewind(record.partition, record.offset);
    const timer = setTimeout(() => {
      retryTimers.delete(timer);
      pauses.resume(record.partition, 'retry');
    }, delayMs);
    retryTimers.add(timer);
  }

  /**
   * Starts the record at `run.index`: its handler's promise, or STOP (stopping, paused, rebalanced)
   * or SKIPPED. Synchronous up to the handler call once the schema is cached. Throws when the record
   * fails before its handler runs (decode, validation).
   */
  function startRecord(run: BatchRun): Promise<void> | typeof STOP | typeof SKIPPED {
    if (draining || !run.control.isActive() || (pauses.anyPaused() && pauses.isPaused(run.partition))) return STOP;
    const { batch, index } = run;
    // The offset is read only when a skip or a failed head record needs it (rarely).
    if (run.skipBelow !== undefined) {
      if (BigInt(batch.offsetAt(index)) < run.skipBelow) return SKIPPED;
      run.skipBelow = undefined; // offsets only grow within a batch
    }
    const failure = run.failure;
    let attempt = 1;
    if (failure !== undefined && failure.offset === batch.offsetAt(index)) {
      // Its budget is spent and only the dead-letter write failed: straight to the DLQ again.
      if (failure.deadLetterPending !== undefined) {
        run.attempt = failure.attempts;
        throw failure.deadLetterPending;
      }
      attempt = failure.attempts + 1;
    }
    run.attempt = attempt;
    run.handle = run.consumeSpan === undefined ? undefined : startHandleSpan(batch.recordAt(index), run.consumeSpan, attempt);
    const buffer = batch.valueAt(index);
    if (buffer === null) throw permanentError('DECODE_EMPTY_VALUE', 'record has no value (tombstone)');
    // Synchronous once the schema id is cached: no promise or microtask for the decode.
    const decoded = codec.decodeCached === undefined ? NOT_CACHED : codec.decodeCached(buffer);
    if (decoded === NOT_CACHED) return decodeThenHandle(run, buffer);
    return callHandler(run, validate === undefined ? (decoded as Value) : validated(decoded));
  }

  /** The first record of a schema id: its schema is fetched from the registry (then cached). */
  async function decodeThenHandle(run: BatchRun, buffer: Buffer): Promise<void> {
    const decoded = await codec.decode(buffer);
    await callHandler(run, validated(decoded));
  }

  function callHandler(run: BatchRun, value: Value): Promise<void> {
    const handle = run.handle;
    if (handle === undefined) return handler(value, new RecordContext<Deps>(scope, run.batch, run.index, run.attempt, undefined));
    const ctx = new RecordContext<Deps>(scope, run.batch, run.index, run.attempt, { span: handle.span, record: handle.record });
    // The handler runs with its span active: spans it makes (produce, database) are its children.
    return context.with(trace.setSpan(handle.parent, handle.span), handler, undefined, value, ctx);
  }

  function recordSucceeded(run: BatchRun): void {
    run.timer.succeeded();
    run.handled++;
    run.lastIndex = run.index;
    if (run.handle !== undefined) {
      run.handle.span.end();
      run.handle = undefined;
    }
    if (run.failure !== undefined) {
      if (failures.endWait(run.partition) !== undefined) log.info({ partition: run.partition }, 'dependency back');
      failures.clear(run.partition);
      run.failure = undefined;
    }
  }

  /** Retries or dead-letters the failed record at `run.index`; true when the batch stops here (a retry rewinds the partition). */
  async function recordFailed(run: BatchRun, error: unknown): Promise<boolean> {
    run.timer.failed();
    const handle = run.handle;
    run.handle = undefined;
    if (handle !== undefined) {
      recordSpanError(handle.span, error);
      handle.span.end();
    }
    const record = handle?.record ?? run.batch.recordAt(run.index);
    const outcome = await onFailure(record, error, run.attempt);
    run.failure = failures.head(run.partition);
    run.timer.resume();
    if (outcome.kind === 'retry') {
      run.retried = true;
      scheduleRetry(record, outcome.delayMs);
      return true;
    }
    run.lastIndex = run.index; // dead-lettered: committed like a handled record
    return false;
  }

  /**
   * The hot path. Per record: a synchronous decode once the schema is cached, the handler's own
   * promise the only thing awaited, no closures, and little state in locals (see BatchRun).
   */
  async function runBatch(run: BatchRun): Promise<void> {
    for (; run.index < run.size; run.index++) {
      let error: unknown = NO_ERROR;
      try {
        const pending = startRecord(run);
        if (pending === STOP) break;
        if (pending === SKIPPED) continue;
        await pending;
      } catch (caught) {
        error = caught;
      }
      if (error === NO_ERROR) recordSucceeded(run);
      else if (await recordFailed(run, error)) break;
      if (run.timer.mark - run.lastHeartbeat > HEARTBEAT_EVERY_MS) {
        run.timer.pause();
        run.lastHeartbeat = run.timer.mark;
        await run.control.heartbeat().catch(() => undefined);
        run.timer.resume();
      }
    }
  }

  const settled = () => undefined;

  function onBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    if (draining) return Promise.resolve(undefined);
    const work = processBatch(batch, control);
    const tracked = work.then(settled, settled);
    inFlight.add(tracked);
    return work.finally(() => inFlight.delete(tracked));
  }

  async function processBatch(batch: RecordBatch, control: BatchControl): Promise<string | undefined> {
    const partition = batch.partition;
    // Tracing is decided once per batch: when it is off no span API is called per record.
    const consumeSpan = telemetryActive()
      ? tracer().startSpan('consume', {
          kind: SpanKind.CONSUMER,
          attributes: {
            'messaging.system': 'kafka',
            'messaging.operation.type': 'receive',
            'messaging.destination.name': topic,
            'messaging.destination.partition.id': String(partition),
            'messaging.consumer.group.name': options.groupId,
            'messaging.batch.message_count': batch.size,
          },
        })
      : undefined;
    const run = new BatchRun(batch, control, consumeSpan, offsets.position(partition), failures.head(partition), new RecordTimer(handlerSeconds, firstBound));
    try {
      await runBatch(run);
    } finally {
      run.timer.pause();
      // Counters and the latency histogram move once per batch.
      if (run.handled > 0) {
        recordsProcessed.inc(run.handled);
        handlerSeconds.flush();
      }
      if (consumeSpan !== undefined) {
        consumeSpan.setAttribute('agent_manager.records_handled', run.handled);
        consumeSpan.end();
      }
    }
    const lastHandled = run.lastIndex < 0 ? undefined : batch.offsetAt(run.lastIndex);
    if (lastHandled !== undefined) {
      const next = BigInt(lastHandled) + 1n;
      // After a retry the position is the failed record's (set by scheduleRetry).
      offsets.handled(partition, next, run.retried);
      if (draining || offsets.commitDue()) await offsets.flush();
      metrics.consumerLag.set({ topic, partition: String(partition) }, Math.max(0, Number(BigInt(batch.highWatermark) - next)));
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
        // Attempt counts are kept (see FailureLedger); waits end on partitions gone elsewhere.
        failures.reassigned(assigned);
        offsets.reassigned(assigned);
        log.info({ partitions: assigned }, 'partitions assigned');
      });
      try {
        await consumer.connect();
        await consumer.subscribe([topic], options.fromBeginning ?? true);
        state = 'RUNNING';
        await consumer.run({ concurrency: options.concurrency ?? 4, onBatch });
        commitTimer = setInterval(() => void offsets.flush(), offsets.intervalMs);
        if (pauses.topicPaused()) consumer.pause(topic);
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
      failures.endAllWaits();
      try {
        // Stop fetching, let each in-flight batch finish its current record and commit, then leave.
        // Throws when the consumer never ran (a failed start); there is nothing to pause then.
        try {
          consumer.pause(topic);
        } catch {
          // not running
        }
        clearInterval(commitTimer);
        // A handler stuck on a dependency that is down (e.g. a Redis command in the offline queue)
        // must not hold the drain until its grace runs out: past the wait its record is left
        // uncommitted, and the partition's next owner handles it again (at-least-once).
        const drained = await settlesWithin(Promise.allSettled([...inFlight]), drainWaitMs);
        if (!drained) log.warn({ waitedMs: drainWaitMs, batches: inFlight.size }, 'in-flight records did not finish in time; leaving them uncommitted');
        await offsets.flush();
        await consumer.disconnect();
      } finally {
        state = 'STOPPED';
        log.info('worker stopped');
      }
    },
    pauseAll(reason) {
      pauses.pauseAll(reason);
      log.info({ reason }, 'all partitions paused');
    },
    resumeAll(reason) {
      pauses.resumeAll(reason);
      log.info({ reason }, 'partitions resumed');
    },
  };
}
