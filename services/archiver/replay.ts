/**
 * `audit replay`: produces the archived events of a range of days back into a topic (the DR drill's
 * rebuild cluster or topic), in archive order: day by day, partition by partition, file by file,
 * offset by offset. Each record keeps its key, its headers (bytes, in order) and its value byte for
 * byte: the archive keeps the event's Avro body and the registry id of its writer schema (the file's
 * `agentmanager.schema_id`), so the value is re-framed with the registry's 5-byte header exactly as
 * it was produced. A record goes to its original partition when the target has it (else by key).
 *
 * Idempotent per event id: the target topic is read once, up to its end, before anything is produced,
 * and every event id already there (its `event-id` header, or the id inside its value) is skipped; so
 * is a second copy within the run. A re-run after a crash or into the same topic adds only what is
 * missing. Not safe against two replays into one topic AT THE SAME TIME (each reads the target once).
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import avsc from 'avsc';
import { formatArchiveKey, listArchiveDays, listDayFiles } from '../../lib/archive/layout.ts';
import { getArchiveObject } from '../../lib/archive/objects.ts';
import { openArchiveFile } from '../../lib/archive/reader.ts';
import { avroType } from '../../lib/contracts/schemas.ts';
import type { PartitionRange, TopicAdmin } from '../../lib/dlq/reader.ts';
import { errorMessage, isAppError, permanentError, retryableError } from '../../lib/errors.ts';
import { readTopicToEnd } from '../../lib/kafka/read-to-end.ts';
import type { KafkaClient, OutgoingRecord } from '../../lib/kafka/types.ts';

/** The header every outbox record carries with its event id. */
export const EVENT_ID_HEADER = 'event-id';

/** The registry's wire format: magic byte 0, then the schema id as a big-endian int32. */
const FRAME_BYTES = 5;

export interface ReplayArchiveOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  /** Inclusive days, `YYYY-MM-DD`. */
  readonly from: string;
  readonly to: string;
  readonly kafka: Pick<KafkaClient, 'consumer' | 'producer'>;
  readonly admin: TopicAdmin;
  /** The topic produced into; it must exist. */
  readonly topic: string;
  /** A consumer group of its own to read the target's event ids (nothing committed, deleted afterwards). */
  readonly groupId: string;
  /** Records per produce request; default 500. */
  readonly chunk?: number;
  /** Longest wait without progress while reading the target; default 30 s. */
  readonly idleTimeoutMs?: number;
  readonly progress?: (event: ReplayProgress) => void;
}

export type ReplayProgress =
  | { readonly kind: 'target'; readonly topic: string; readonly partitions: number; readonly existing: number }
  | { readonly kind: 'file'; readonly day: string; readonly key: string; readonly records: number; readonly produced: number; readonly skipped: number }
  | { readonly kind: 'day'; readonly day: string; readonly files: number; readonly records: number; readonly produced: number; readonly skipped: number };

export interface ReplaySummary {
  readonly topic: string;
  readonly days: number;
  readonly files: number;
  readonly records: number;
  /** Produced by this run. */
  readonly produced: number;
  /** Already in the target (or twice in the archive): not produced again. */
  readonly skipped: number;
  /** Produced by key because the target has fewer partitions than the archive. */
  readonly repartitioned: number;
}

/** The registry-framed Kafka value of an archived event body. */
export function frameValue(schemaId: number, eventBytes: Buffer): Buffer {
  const frame = Buffer.alloc(FRAME_BYTES);
  frame.writeUInt32BE(schemaId, 1);
  return Buffer.concat([frame, eventBytes]);
}

/** The event ids already in the target, and the values whose id needs a writer schema to read. */
interface TargetIds {
  readonly ids: Set<string>;
  /** Framed values without an `event-id` header, by schema id, decoded once a file brings that schema. */
  readonly pending: Map<number, Buffer[]>;
}

function eventIdOf(event: unknown): string | undefined {
  const id = (event as { eventId?: unknown } | null)?.eventId;
  return typeof id === 'string' ? id.toLowerCase() : undefined;
}

/** Reads the target from its start to its end offsets as of now, collecting event ids. */
async function readTargetIds(options: ReplayArchiveOptions, partitions: readonly PartitionRange[]): Promise<TargetIds> {
  const ids = new Set<string>();
  const pending = new Map<number, Buffer[]>();
  const remaining = new Map<number, bigint>();
  for (const range of partitions) if (BigInt(range.low) < BigInt(range.high)) remaining.set(range.partition, BigInt(range.high));
  if (remaining.size === 0) return { ids, pending };

  const { kafka, topic, groupId } = options;
  try {
    await readTopicToEnd(
      { kafka, topic, groupId, ends: remaining, ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }), timeoutCode: 'AUDIT_REPLAY_READ_TIMEOUT', what: `reading the event ids already in ${topic}` },
      (record) => {
        const header = record.headerList?.find((h) => h.key === EVENT_ID_HEADER)?.value ?? (record.headers[EVENT_ID_HEADER] !== undefined ? Buffer.from(record.headers[EVENT_ID_HEADER]) : null);
        if (header !== null) ids.add(header.toString('utf8').toLowerCase());
        else if (record.value !== null && record.value.length > FRAME_BYTES && record.value[0] === 0) {
          const schemaId = record.value.readUInt32BE(1);
          const list = pending.get(schemaId) ?? [];
          list.push(record.value);
          pending.set(schemaId, list);
        }
      },
    );
  } finally {
    await options.admin.deleteGroup(groupId).catch(() => undefined);
  }
  return { ids, pending };
}

/** Adds the ids of the target's header-less values written with `schemaId`, now that a file gave that schema. */
function settlePending(target: TargetIds, schemaId: number, schema: Record<string, unknown>): void {
  const values = target.pending.get(schemaId);
  if (values === undefined) return;
  target.pending.delete(schemaId);
  // The file's schema wraps the events' writer schema as its `event` field.
  const fields = (schema['fields'] ?? []) as { name: string; type: Record<string, unknown> }[];
  const writer = fields.find((f) => f.name === 'event')?.type;
  if (writer === undefined) return;
  const eventType: avsc.Type = avroType(writer, `writer schema ${schemaId}`);
  for (const value of values) {
    try {
      const id = eventIdOf(eventType.fromBuffer(value.subarray(FRAME_BYTES)));
      if (id !== undefined) target.ids.add(id);
    } catch {
      // Not an audit event of this schema: it cannot be one of ours.
    }
  }
}

export async function replayArchive(options: ReplayArchiveOptions): Promise<ReplaySummary> {
  const { s3, bucket, prefix, topic } = options;
  const chunk = options.chunk ?? 500;
  let partitions: PartitionRange[];
  try {
    partitions = await options.admin.partitions(topic);
  } catch (error) {
    if (isAppError(error) && error.code === 'DLQ_UNKNOWN_TOPIC') {
      throw permanentError('AUDIT_REPLAY_UNKNOWN_TOPIC', `the target topic ${topic} does not exist: create it first (e.g. \`agent-manager topics create\` with the rebuild's TOPIC_PREFIX), or name another with --topic`, error, { topic });
    }
    throw isAppError(error) ? error : retryableError('AUDIT_REPLAY_KAFKA_UNAVAILABLE', `cannot read the partitions of the target topic ${topic}: ${errorMessage(error)} (are the brokers, --brokers or KAFKA_BROKERS, reachable with these KAFKA_SSL_* credentials?)`, error, { topic });
  }
  const partitionCount = partitions.length;
  const target = await readTargetIds(options, partitions);
  options.progress?.({ kind: 'target', topic, partitions: partitionCount, existing: target.ids.size + [...target.pending.values()].reduce((n, l) => n + l.length, 0) });

  const producer = options.kafka.producer();
  await producer.connect();
  const summary = { topic, days: 0, files: 0, records: 0, produced: 0, skipped: 0, repartitioned: 0 };
  try {
    const days = (await listArchiveDays(s3, bucket, prefix)).filter((d) => d >= options.from && d <= options.to);
    for (const day of days) {
      const dayDone = { files: 0, records: 0, produced: 0, skipped: 0 };
      for (const name of await listDayFiles(s3, bucket, prefix, day)) {
        const key = formatArchiveKey(name);
        const object = await getArchiveObject(s3, bucket, key);
        const file = await openArchiveFile(object.Body as Readable, { name: key });
        const schemaId = file.header.schemaId;
        if (schemaId === undefined) {
          throw permanentError('AUDIT_REPLAY_NO_SCHEMA_ID', `${key}: the file's metadata has no agentmanager.schema_id, so its events cannot be framed as they were produced`, undefined, { key });
        }
        settlePending(target, schemaId, file.header.schema);
        const partition = name.partition < partitionCount ? name.partition : undefined;
        const done = { records: 0, produced: 0, skipped: 0 };
        let batch: OutgoingRecord[] = [];
        const flush = async () => {
          if (batch.length === 0) return;
          try {
            await producer.send(topic, batch);
          } catch (error) {
            throw retryableError('AUDIT_REPLAY_PRODUCE_FAILED', `producing ${batch.length} records of ${key} into ${topic}: ${errorMessage(error)} (a re-run skips what was produced)`, error, { key, topic });
          }
          done.produced += batch.length;
          batch = [];
        };
        for await (const record of file.records) {
          done.records += 1;
          const id = eventIdOf(record.event);
          if (id !== undefined && target.ids.has(id)) {
            done.skipped += 1;
            continue;
          }
          if (id !== undefined) target.ids.add(id);
          if (partition === undefined) summary.repartitioned += 1;
          batch.push({ key: record.key, value: frameValue(schemaId, record.eventBytes), headerList: record.headers, ...(partition !== undefined ? { partition } : {}) });
          if (batch.length >= chunk) await flush();
        }
        await flush();
        dayDone.files += 1;
        dayDone.records += done.records;
        dayDone.produced += done.produced;
        dayDone.skipped += done.skipped;
        options.progress?.({ kind: 'file', day, key, ...done });
      }
      summary.days += 1;
      summary.files += dayDone.files;
      summary.records += dayDone.records;
      summary.produced += dayDone.produced;
      summary.skipped += dayDone.skipped;
      options.progress?.({ kind: 'day', day, ...dayDone });
    }
  } finally {
    await producer.disconnect();
  }
  return summary;
}
