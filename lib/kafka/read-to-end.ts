import { retryableError } from '../errors.ts';
import type { KafkaClient, KafkaRecord } from './types.ts';

export interface ReadToEndOptions {
  readonly kafka: Pick<KafkaClient, 'consumer'>;
  readonly topic: string;
  /** A group of its own, used once (nothing is committed); the caller deletes it afterwards. */
  readonly groupId: string;
  /** The partitions to read and, for each, the offset to stop before (exclusive). */
  readonly ends: ReadonlyMap<number, bigint>;
  /** Longest wait without progress (joining the group, fetching) before giving up; default 30 s. */
  readonly idleTimeoutMs?: number;
  /** The code of the retryable error thrown when no progress is made for `idleTimeoutMs`. */
  readonly timeoutCode: string;
  /** What was being read, for that error's message (e.g. "reading agent-requests.dlq"). */
  readonly what: string;
}

/**
 * Reads `topic` from the beginning up to the given end offsets (records written meanwhile are left
 * for a later read), in offset order within each partition, with a one-off consumer; the read
 * that a DLQ listing and an archive replay's "what is already there" both need.
 */
export async function readTopicToEnd(options: ReadToEndOptions, onRecord: (record: KafkaRecord) => void | Promise<void>): Promise<void> {
  const { kafka, topic, groupId } = options;
  const remaining = new Map(options.ends);
  if (remaining.size === 0) return;
  const idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
  const consumer = kafka.consumer({ groupId });
  let timer: NodeJS.Timeout | undefined;
  await consumer.connect();
  try {
    await consumer.subscribe([topic], true);
    await new Promise<void>((resolve, reject) => {
      const idle = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          const left = [...remaining.keys()].join(', ');
          reject(retryableError(options.timeoutCode, `${options.what} made no progress for ${idleTimeoutMs} ms (partitions ${left} not read to their end); is Kafka reachable and may this client join consumer group ${groupId}?`));
        }, idleTimeoutMs);
      };
      idle();
      consumer
        .run({
          concurrency: 1,
          onBatch: async (batch) => {
            idle();
            const last = batch.offsetAt(batch.size - 1);
            const end = remaining.get(batch.partition);
            if (end === undefined) return last;
            for (let i = 0; i < batch.size; i++) {
              if (BigInt(batch.offsetAt(i)) >= end) break;
              await onRecord(batch.recordAt(i));
            }
            if (BigInt(last) + 1n >= end) {
              remaining.delete(batch.partition);
              consumer.pause(topic, [batch.partition]);
              if (remaining.size === 0) resolve();
            }
            return last;
          },
        })
        .catch(reject);
    });
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
}
