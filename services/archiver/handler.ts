/**
 * The archiver's per-batch work that needs only decoded events: validating an audit event (what the
 * Avro schema cannot say) and the index rows of a batch.
 */
import type { AuditIndexEntry } from '../../lib/archive/index-store.ts';
import type { TopicRecords } from '../../lib/contracts/schemas.ts';
import { permanentError } from '../../lib/errors.ts';

export type AuditEvent = TopicRecords['audit-events'];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const HASH = /^[0-9a-f]{64}$/;

/** An audit event the index can hold; anything else is dead-lettered (VALIDATION_FAILED) record by record. */
export function validateAuditEvent(value: unknown): AuditEvent {
  const event = value as AuditEvent;
  if (typeof event !== 'object' || event === null) throw permanentError('VALIDATION_FAILED', 'an audit event must be a record');
  if (!UUID.test(event.eventId)) throw permanentError('VALIDATION_FAILED', `eventId ${JSON.stringify(event.eventId)} is not a UUID`);
  for (const field of ['agentId', 'requestId'] as const) {
    const id = event[field];
    if (id !== null && !UUID.test(id)) throw permanentError('VALIDATION_FAILED', `${field} ${JSON.stringify(id)} is not a UUID`);
  }
  if (!(event.time instanceof Date) || Number.isNaN(event.time.getTime())) throw permanentError('VALIDATION_FAILED', 'time is not a time');
  if (event.actor === '' || event.action === '') throw permanentError('VALIDATION_FAILED', 'actor and action must not be empty');
  if (!HASH.test(event.hash)) throw permanentError('VALIDATION_FAILED', `hash ${JSON.stringify(event.hash)} is not a lower-case hex SHA-256`);
  return event;
}

/** The index row of an event at its place on the topic. */
export function indexEntryOf(event: AuditEvent, partition: number, offset: number): AuditIndexEntry {
  return {
    eventId: event.eventId.toLowerCase(),
    time: event.time,
    action: event.action,
    actor: event.actor,
    agentId: event.agentId?.toLowerCase() ?? null,
    requestId: event.requestId?.toLowerCase() ?? null,
    traceId: event.traceId,
    partition,
    offset,
    payloadHash: event.hash,
  };
}

/** The index rows of one partition's batch (one INSERT for all of them: insertAuditIndex). */
export function indexEntriesOf(batch: { readonly partition: number; readonly records: readonly { readonly value: AuditEvent; readonly offset: string }[] }): AuditIndexEntry[] {
  return batch.records.map((r) => indexEntryOf(r.value, batch.partition, Number(r.offset)));
}
