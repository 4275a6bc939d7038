import { randomUUID } from 'node:crypto';
import type { AvroCodec } from '../kafka/avro.ts';
import type { Headers } from '../kafka/types.ts';
import type { PoolClient } from '../db/pool.ts';
import type { TraceContext } from '../tracing.ts';
import { outgoingTraceparent } from '../runtime/producer.ts';
import { contextWithParent, inSpan, SpanKind, telemetryActive, traceOfSpan } from '../telemetry.ts';
import { context, trace } from '@opentelemetry/api';

export const OUTBOX_CHANNEL = 'agent_manager_outbox';

export interface OutboxEvent {
  readonly topic: string;
  /** The agentId. */
  readonly key: string;
  readonly value: unknown;
  /** Consumers de-duplicate by this id (delivery is at-least-once); generated when absent. */
  readonly eventId?: string;
  readonly headers?: Headers;
  readonly trace?: TraceContext;
}

/**
 * Writes events to the outbox inside the caller's transaction (`client` must be in BEGIN): they are
 * published if and only if the transaction commits. Values are Avro-encoded now, so a value that
 * does not fit its schema fails the transaction instead of the relay.
 */
export async function enqueueEvents(client: PoolClient, codec: AvroCodec, events: readonly OutboxEvent[]): Promise<string[]> {
  if (!telemetryActive()) return enqueue(client, codec, events, undefined);
  // An `outbox enqueue` span under the active span (or the first event's trace): the published
  // records carry it as their `traceparent`, so the consumer's `handle` span is its child.
  const parent = trace.getSpan(context.active()) !== undefined ? context.active() : contextWithParent(events[0]?.trace, context.active());
  return inSpan(
    'outbox enqueue',
    { kind: SpanKind.PRODUCER, parent, attributes: { 'messaging.system': 'kafka', 'messaging.operation.type': 'create', 'messaging.batch.message_count': events.length } },
    (span) => enqueue(client, codec, events, traceOfSpan(span)),
  );
}

// One round trip per transaction whatever the number of events: the rows, in order, and the
// NOTIFY that wakes the relay (delivered on commit only).
const INSERT_AND_NOTIFY = `
WITH rows AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[]) WITH ORDINALITY AS r(event_id, topic, key, value, headers, n)
), inserted AS (
  INSERT INTO outbox (event_id, topic, key, value, headers)
  SELECT event_id, topic, key, value, headers FROM rows ORDER BY n
  ON CONFLICT (event_id) DO NOTHING
)
SELECT pg_notify($6, '')`;

async function enqueue(client: PoolClient, codec: AvroCodec, events: readonly OutboxEvent[], span: TraceContext | undefined): Promise<string[]> {
  const ids: string[] = [];
  const topics: string[] = [];
  const keys: string[] = [];
  const values: Buffer[] = [];
  const headers: string[] = [];
  for (const event of events) {
    const eventId = event.eventId ?? randomUUID();
    ids.push(eventId);
    topics.push(event.topic);
    keys.push(event.key);
    values.push(await codec.encode(`${event.topic}-value`, event.value));
    headers.push(JSON.stringify({ ...event.headers, traceparent: outgoingTraceparent(event, span), 'event-id': eventId }));
  }
  await client.query(INSERT_AND_NOTIFY, [ids, topics, keys, values, headers, OUTBOX_CHANNEL]);
  return ids;
}
