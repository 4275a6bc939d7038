import type { Headers, KafkaRecord, OutgoingRecord } from '../kafka/types.ts';

export const DLQ_SUFFIX = '.dlq';
export const dlqTopicOf = (topic: string) => `${topic}${DLQ_SUFFIX}`;

/** Headers added to a dead-lettered record; the original key, value and headers are kept as they were. */
export const DLQ_HEADERS = {
  errorCode: 'x-dlq-error-code',
  errorMessage: 'x-dlq-error-message',
  attempts: 'x-dlq-attempts',
  sourceTopic: 'x-dlq-source-topic',
  sourcePartition: 'x-dlq-source-partition',
  sourceOffset: 'x-dlq-source-offset',
  failedAt: 'x-dlq-failed-at',
  service: 'x-dlq-service',
} as const;

export interface DeadLetterReason {
  readonly code: string;
  readonly message: string;
  readonly attempts: number;
  readonly service: string;
  readonly failedAt: Date;
}

/** The dead-letter copy of `record`: pure, so the format is unit-tested without Kafka. */
export function deadLetterRecord(record: KafkaRecord, reason: DeadLetterReason): OutgoingRecord {
  const headers: Headers = {
    ...record.headers,
    [DLQ_HEADERS.errorCode]: reason.code,
    // Header values stay small: a message is a reason, not a stack trace.
    [DLQ_HEADERS.errorMessage]: reason.message.slice(0, 2000),
    [DLQ_HEADERS.attempts]: String(reason.attempts),
    [DLQ_HEADERS.sourceTopic]: record.topic,
    [DLQ_HEADERS.sourcePartition]: String(record.partition),
    [DLQ_HEADERS.sourceOffset]: record.offset,
    [DLQ_HEADERS.failedAt]: reason.failedAt.toISOString(),
    [DLQ_HEADERS.service]: reason.service,
  };
  return { key: record.key, value: record.value, headers };
}
