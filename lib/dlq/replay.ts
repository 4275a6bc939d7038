import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { buildAuditEvent } from '../audit.ts';
import { withTransaction, type Pool } from '../db/pool.ts';
import { errorMessage, permanentError, retryableError } from '../errors.ts';
import type { AvroCodec } from '../kafka/avro.ts';
import type { ProducerClient } from '../kafka/types.ts';
import { enqueueEvents } from '../outbox/outbox.ts';
import { keyText, refText, replayRecord, REPLAY_HEADER, sourceTopicOf, type DlqRecord, type RecordRef } from './records.ts';

/** The audit action of one replay. */
export const REPLAY_AUDIT_ACTION = 'dlq.replayed';

export interface ReplayDeps {
  /** An idempotent producer with acks from all in-sync replicas (`KafkaClient.producer()`). */
  readonly producer: ProducerClient;
  /** The database whose outbox carries the audit events. */
  readonly pool: Pool;
  readonly codec: AvroCodec;
  /** The audit topic (prefix-aware). */
  readonly auditTopic: string;
}

export interface ReplayRequest {
  /** Who replays (recorded in each audit event). */
  readonly actor: string;
  /** Why (recorded in each audit event). */
  readonly reason: string;
}

export interface ReplayedRecord extends RecordRef {
  /** The DLQ topic it was read from. */
  readonly topic: string;
  /** The topic it was sent back to. */
  readonly to: string;
  readonly code: string;
  readonly key: string;
  readonly auditEventId: string;
}

const agentIdSchema = z.uuid();

/** Records are keyed by agentId: such a key names the audit event's agent. */
function agentIdOf(key: Buffer | null): string | null {
  const text = key?.toString('utf8');
  return text !== undefined && text === text.toLowerCase() && agentIdSchema.safeParse(text).success ? text : null;
}

/** Where a DLQ record goes back to: its DLQ's source topic, which the record's own header must not contradict. */
export function replayTarget(record: DlqRecord): string {
  const target = sourceTopicOf(record.topic);
  if (record.source.topic !== null && record.source.topic !== target) {
    throw permanentError(
      'DLQ_SOURCE_MISMATCH',
      `${record.topic} ${refText(record)} says it came from ${record.source.topic}, not ${target}; a DLQ replays only to its own topic`,
    );
  }
  return target;
}

/**
 * Sends each record back to its source topic with its original key, value and headers (plus
 * `x-dlq-replayed-from`), one at a time and in the order given; after each send is acknowledged by
 * every in-sync replica, an audit event (`dlq.replayed`: who, which DLQ record, where to, why) is
 * written through the outbox. A record that fails again goes back to the DLQ through the runtime.
 *
 * Every record is checked before the first is sent. On a failure the records already replayed are
 * in the error's context (`replayed`) and reported through `onReplayed` as they go.
 */
export async function replayDlqRecords(
  deps: ReplayDeps,
  records: readonly DlqRecord[],
  request: ReplayRequest,
  onReplayed: (replayed: ReplayedRecord) => void = () => undefined,
): Promise<ReplayedRecord[]> {
  if (request.actor.trim() === '') throw permanentError('DLQ_USAGE', 'a replay needs an actor (who replays)');
  const targets = records.map(replayTarget);
  const replayed: ReplayedRecord[] = [];
  for (const [i, record] of records.entries()) {
    const to = targets[i] as string;
    const outgoing = replayRecord(record);
    try {
      await deps.producer.send(to, [outgoing]);
    } catch (error) {
      throw retryableError('DLQ_REPLAY_FAILED', `sending ${record.topic} ${refText(record)} to ${to} failed (nothing sent for it): ${errorMessage(error)}`, error, { replayed });
    }
    const audit = buildAuditEvent({
      actor: request.actor,
      action: REPLAY_AUDIT_ACTION,
      agentId: agentIdOf(record.key),
      requestId: null,
      traceId: null,
      payload: {
        dlq: { topic: record.topic, partition: record.partition, offset: record.offset },
        to,
        reason: request.reason,
        marker: outgoing.headers?.[REPLAY_HEADER],
        failure: { code: record.code, message: record.reason, attempts: record.attempts, service: record.service, at: record.time },
        source: record.source,
      },
    });
    await auditWithRetries(deps, audit, record, to, replayed);
    const done: ReplayedRecord = { topic: record.topic, partition: record.partition, offset: record.offset, to, code: record.code, key: keyText(record.key), auditEventId: audit.eventId };
    replayed.push(done);
    onReplayed(done);
  }
  return replayed;
}

/**
 * The record is already on its topic: its audit event must follow. The outbox ignores a second
 * insert of one event id, so trying again cannot write it twice.
 */
async function auditWithRetries(deps: ReplayDeps, audit: ReturnType<typeof buildAuditEvent>, record: DlqRecord, to: string, replayed: readonly ReplayedRecord[]): Promise<void> {
  const attempts = 5;
  for (let attempt = 1; ; attempt++) {
    try {
      await withTransaction(deps.pool, (client) => enqueueEvents(client, deps.codec, [{ topic: deps.auditTopic, key: audit.agentId ?? audit.eventId, value: audit, eventId: audit.eventId }]));
      return;
    } catch (error) {
      if (attempt >= attempts) {
        throw retryableError(
          'DLQ_AUDIT_FAILED',
          `${record.topic} ${refText(record)} WAS replayed to ${to}, but its audit event ${audit.eventId} could not be written after ${attempts} attempts: ${errorMessage(error)}`,
          error,
          { replayed, unaudited: { topic: record.topic, partition: record.partition, offset: record.offset, auditEventId: audit.eventId } },
        );
      }
      await sleep(500 * attempt);
    }
  }
}
