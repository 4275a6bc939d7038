import { permanentError } from '../errors.ts';
import { readTopicToEnd } from '../kafka/read-to-end.ts';
import type { KafkaClient } from '../kafka/types.ts';
import { parseDlqRecord, type DlqRecord, type RecordRef } from './records.ts';

/** A partition's first offset still held and the offset the next record will get. */
export interface PartitionRange {
  readonly partition: number;
  readonly low: string;
  readonly high: string;
}

/** What reading a topic needs beyond a consumer: the offsets of its partitions (an admin client). */
export interface TopicAdmin {
  /** Every partition of `topic`; throws a permanent `DLQ_UNKNOWN_TOPIC` when it does not exist. */
  partitions(topic: string): Promise<PartitionRange[]>;
  /** Removes a consumer group once its work is done (best effort). */
  deleteGroup(groupId: string): Promise<void>;
}

export interface ReadDlqOptions {
  readonly kafka: Pick<KafkaClient, 'consumer'>;
  readonly admin: TopicAdmin;
  readonly topic: string;
  /** A group of its own, used once (nothing is committed) and deleted afterwards. */
  readonly groupId: string;
  /** Read only up to these records (their partitions, up to the highest offset asked for in each). */
  readonly only?: readonly RecordRef[];
  /** Longest wait without progress (joining the group, fetching) before giving up; default 30 s. */
  readonly idleTimeoutMs?: number;
}

export interface ReadDlqResult {
  readonly partitions: readonly PartitionRange[];
  /** How many records were passed to `onRecord`. */
  readonly read: number;
}

/**
 * Reads a DLQ topic from the beginning up to its end offsets as they were when the read began
 * (records dead-lettered meanwhile wait for the next read), in offset order within each partition.
 * A one-off consumer group reads; nothing is committed, and the group is deleted at the end.
 */
export async function readDlq(options: ReadDlqOptions, onRecord: (record: DlqRecord) => void | Promise<void>): Promise<ReadDlqResult> {
  const { kafka, admin, topic, groupId } = options;
  const partitions = await admin.partitions(topic);
  // Exclusive end per partition still to read.
  const remaining = new Map<number, bigint>();
  for (const range of partitions) {
    let end = BigInt(range.high);
    if (options.only !== undefined) {
      const asked = options.only.filter((r) => r.partition === range.partition).map((r) => BigInt(r.offset));
      if (asked.length === 0) continue;
      const highest = asked.reduce((a, b) => (a > b ? a : b));
      if (highest + 1n < end) end = highest + 1n;
    }
    if (BigInt(range.low) < end) remaining.set(range.partition, end);
  }
  if (remaining.size === 0) return { partitions, read: 0 };

  let read = 0;
  try {
    await readTopicToEnd({ kafka, topic, groupId, ends: remaining, ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }), timeoutCode: 'DLQ_READ_TIMEOUT', what: `reading ${topic}` }, async (record) => {
      await onRecord(parseDlqRecord(record));
      read++;
    });
  } finally {
    await admin.deleteGroup(groupId).catch(() => undefined);
  }
  return { partitions, read };
}

/** Reads the records `refs` names; throws a permanent `DLQ_RECORD_NOT_FOUND` naming any that is not in the topic. */
export async function readDlqRecords(options: Omit<ReadDlqOptions, 'only'>, refs: readonly RecordRef[]): Promise<DlqRecord[]> {
  const wanted = new Set(refs.map((r) => `${r.partition}/${r.offset}`));
  const found = new Map<string, DlqRecord>();
  await readDlq({ ...options, only: refs }, (record) => {
    const ref = `${record.partition}/${record.offset}`;
    if (wanted.has(ref)) found.set(ref, record);
  });
  const missing = [...wanted].filter((ref) => !found.has(ref));
  if (missing.length > 0) {
    throw permanentError('DLQ_RECORD_NOT_FOUND', `${options.topic} has no record at ${missing.join(', ')} (partition/offset; removed by retention, or never written)`);
  }
  return refs.map((r) => found.get(`${r.partition}/${r.offset}`) as DlqRecord);
}
