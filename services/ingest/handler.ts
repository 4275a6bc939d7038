/**
 * The `agent-requests` batch handler. The runtime has decoded each record and checked its contract
 * (`parseAgentRequestRecord`, the worker's `validate`: a malformed record is dead-lettered there);
 * this decides the requests of one partition's batch, in order, with the identity each names
 * (`requestedBy`; the topic itself is guarded by Kafka ACLs), in ONE Postgres transaction: the
 * request rows, then the outbox rows of the whole batch in one statement.
 *
 * Each request stays all-or-nothing. A rejection is an outcome (status + audit events), not an
 * error. A request that fails (a Postgres error, an event that does not encode) rolls the batch back,
 * and the batch is decided again with a SAVEPOINT around each request and its events: the failed
 * request alone is rolled back and dead-lettered (permanent failures at once, retryable ones once
 * the batch's attempts are spent, as the per-record worker did); the others commit. An unavailable
 * Postgres or registry throws (the runtime holds the partition and retries the batch).
 */
import type { AgentRequest } from '../../lib/contracts/types.ts';
import { withTransaction, type PoolClient } from '../../lib/db/pool.ts';
import { isRetryable, unavailableDependency } from '../../lib/errors.ts';
import type { Headers, KafkaRecord } from '../../lib/kafka/types.ts';
import type { Logger } from '../../lib/logger.ts';
import { enqueueEvents, type OutboxEvent } from '../../lib/outbox/outbox.ts';
import type { BatchHandler, DecodedBatch, DecodedRecord } from '../../lib/runtime/batch-worker.ts';
import { context } from '@opentelemetry/api';
import { childTrace, parseTraceparent, type TraceContext } from '../../lib/tracing.ts';
import { contextWithParent, inSpan, SpanKind, telemetryActive, traceOfSpan } from '../../lib/telemetry.ts';
import { classifyDatabaseError, countDecision, decideRequest, type DecidedRequest, type ProcessDeps, type RequestOutcome } from './process-request.ts';
import { parseAgentRequestRecord } from './validation.ts';

/** A request that failed on its own: dead-lettered with `error`, its batch committed without it. */
export interface FailedRequest {
  readonly record: KafkaRecord;
  readonly error: unknown;
  readonly attempts: number;
}

export interface IngestDeps extends ProcessDeps {
  /** The runtime's attempts per batch: a request whose retryable failure lasts this long is dead-lettered alone. */
  readonly maxAttempts: number;
  /** Writes the dead-letter copies of failed requests (to `agent-requests.dlq`), counted and logged. */
  readonly deadLetter: (topic: string, failed: readonly FailedRequest[]) => Promise<void>;
}

export const validateAgentRequestRecord = (value: unknown): AgentRequest => parseAgentRequestRecord(value);

/** The record as the DLQ copies it: its bytes as produced (the worker runs with `rawRecords`). */
function kafkaRecordOf(topic: string, partition: number, record: DecodedRecord<AgentRequest>): KafkaRecord {
  const headers: Headers = {};
  for (const header of record.raw?.headers ?? []) if (header.value !== null) headers[header.key] = header.value.toString();
  return { topic, partition, offset: record.offset, key: record.raw?.key ?? (record.key === null ? null : Buffer.from(record.key)), value: record.raw?.value ?? null, headers, timestamp: record.timestamp };
}

function traceparentOf(record: DecodedRecord<AgentRequest>): string | undefined {
  let found: string | undefined;
  for (const header of record.raw?.headers ?? []) if (header.key === 'traceparent' && header.value !== null) found = header.value.toString();
  return found;
}

interface Decided {
  readonly record: DecodedRecord<AgentRequest>;
  readonly outcome: RequestOutcome;
  readonly traceId: string;
}

interface BatchDecisions {
  readonly decided: readonly Decided[];
  readonly failed: readonly FailedRequest[];
}

/** Thrown inside the fast transaction to roll it back and decide the batch again request by request. */
class IsolateRequests extends Error {}

/**
 * Decides one request, inside a `handle` span continuing its record's trace when tracing is on
 * (its events then carry the span's context), else with a child of the record's `traceparent`.
 */
function decideTraced(client: PoolClient, request: AgentRequest, parent: TraceContext | undefined, deps: IngestDeps, batch: DecodedBatch<AgentRequest>, record: DecodedRecord<AgentRequest>): Promise<DecidedRequest & { readonly trace: TraceContext }> {
  if (!telemetryActive()) {
    const trace = childTrace(parent);
    return decideRequest(client, request, request.requestedBy, deps, { trace, source: 'kafka' }).then((decided) => ({ ...decided, trace }));
  }
  const attributes = { 'messaging.system': 'kafka', 'messaging.operation.type': 'process', 'messaging.destination.name': batch.topic, 'messaging.destination.partition.id': String(batch.partition), 'messaging.kafka.offset': Number(record.offset), 'agent_manager.attempt': batch.attempt };
  return inSpan('handle', { kind: SpanKind.CONSUMER, parent: contextWithParent(parent, context.active()), attributes }, async (span) => {
    const trace = traceOfSpan(span);
    const decided = await decideRequest(client, request, request.requestedBy, deps, { trace, source: 'kafka' });
    return { ...decided, trace };
  });
}

/**
 * One transaction for the batch. `isolated`: a SAVEPOINT around each request and its own outbox
 * statement, so a failing request is rolled back alone; otherwise no savepoints and one outbox
 * statement for the batch, and any failure but an unavailable dependency throws IsolateRequests.
 */
async function decideBatch(batch: DecodedBatch<AgentRequest>, deps: IngestDeps, isolated: boolean): Promise<BatchDecisions> {
  const lastAttempt = batch.attempt >= deps.maxAttempts;
  const work = withTransaction(deps.pool, async (client) => {
    const decided: Decided[] = [];
    const failed: FailedRequest[] = [];
    const events: OutboxEvent[] = [];
    for (const record of batch.records) {
      const request = record.value;
      if (isolated) await client.query('SAVEPOINT request');
      try {
        const result = await decideTraced(client, request, parseTraceparent(traceparentOf(record)), deps, batch, record);
        if (!isolated) events.push(...result.events);
        else {
          if (result.events.length > 0) await enqueueEvents(client, deps.codec, result.events);
          await client.query('RELEASE SAVEPOINT request');
        }
        decided.push({ record, outcome: result.outcome, traceId: result.trace.traceId });
      } catch (caught) {
        const error = classifyDatabaseError(caught);
        if (unavailableDependency(error) !== undefined) throw error;
        if (!isolated) throw new IsolateRequests();
        await client.query('ROLLBACK TO SAVEPOINT request');
        // Retried with its batch (whose other requests are then decided again, idempotently) until the attempts are spent.
        if (isRetryable(error) && !lastAttempt) throw error;
        failed.push({ record: kafkaRecordOf(batch.topic, batch.partition, record), error, attempts: batch.attempt });
      }
    }
    if (events.length > 0) {
      try {
        await enqueueEvents(client, deps.codec, events);
      } catch (caught) {
        const error = classifyDatabaseError(caught);
        if (unavailableDependency(error) !== undefined) throw error;
        throw new IsolateRequests();
      }
    }
    return { decided, failed };
  });
  // A checkout, BEGIN or COMMIT that fails: the same classification as a request's own statements.
  return work.catch((error: unknown) => {
    throw error instanceof IsolateRequests ? error : classifyDatabaseError(error);
  });
}

function logOutcome(log: Logger, record: DecodedRecord<AgentRequest>, outcome: RequestOutcome, traceId: string, partition: number): void {
  const request = record.value;
  const fields = { requestId: request.requestId, agentId: outcome.agentId ?? undefined, traceId, partition, offset: record.offset };
  if (outcome.replayed) log.info({ ...fields, outcome: outcome.outcome, idempotencyKey: request.idempotencyKey, originalRequestId: outcome.requestId }, 'repeated request: the stored outcome stands');
  else if (outcome.outcome === 'ACCEPTED') log.info({ ...fields, action: request.action, commandId: outcome.commandId }, 'request accepted');
  else log.info({ ...fields, action: request.action, code: outcome.code, reason: outcome.reason }, 'request rejected');
}

export function createIngestBatchHandler(): BatchHandler<AgentRequest, IngestDeps> {
  return async (batch, ctx) => {
    const { deps } = ctx;
    let result: BatchDecisions;
    try {
      result = await decideBatch(batch, deps, false);
    } catch (error) {
      if (!(error instanceof IsolateRequests)) throw error;
      ctx.log.info({ topic: batch.topic, partition: batch.partition, requests: batch.records.length, attempt: batch.attempt }, 'a request of the batch failed: deciding the batch again request by request');
      result = await decideBatch(batch, deps, true);
    }
    // After the commit, as the per-record worker did before committing the offset.
    if (result.failed.length > 0) await deps.deadLetter(batch.topic, result.failed);
    for (const { record, outcome, traceId } of result.decided) {
      countDecision(deps, 'kafka', outcome);
      logOutcome(ctx.log, record, outcome, traceId, batch.partition);
    }
  };
}
