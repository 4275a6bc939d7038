/**
 * Dead-letter records as an operator sees them: parsed from what the runtime wrote
 * (`lib/runtime/dlq.ts`), filtered, chosen, and turned back into the record their source topic
 * first had. Pure: unit-tested without Kafka; `reader.ts` and `replay.ts` do the I/O.
 */
import ms from 'ms';
import { permanentError } from '../errors.ts';
import type { Headers, KafkaRecord, OutgoingRecord } from '../kafka/types.ts';
import { DLQ_HEADERS, DLQ_SUFFIX } from '../runtime/dlq.ts';

/** Added to a replayed record: `<dlq topic>/<partition>/<offset>` of the DLQ record it came from. */
export const REPLAY_HEADER = 'x-dlq-replayed-from';

const DLQ_OWN_HEADERS: ReadonlySet<string> = new Set(Object.values(DLQ_HEADERS));

/** Code of a DLQ record written without one (not by this runtime). */
export const UNKNOWN_CODE = 'UNKNOWN';

/** One DLQ record with its reason read out of the headers. */
export interface DlqRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  /** When it was dead-lettered (`x-dlq-failed-at`), else the record's Kafka timestamp. */
  readonly time: Date;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  /** Every header, the DLQ's own included. */
  readonly headers: Headers;
  readonly code: string;
  readonly reason: string;
  readonly attempts: number | null;
  readonly service: string | null;
  readonly source: { readonly topic: string | null; readonly partition: number | null; readonly offset: string | null };
}

/** A DLQ record without its key and value bytes: what a listing keeps of each record. */
export interface DlqRecordSummary extends Omit<DlqRecord, 'value'> {
  readonly valueSize: number;
}

function integer(text: string | undefined): number | null {
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : null;
}

function date(text: string | undefined): Date | null {
  if (text === undefined) return null;
  const parsed = new Date(/^\d+$/.test(text) ? Number(text) : text);
  return Number.isNaN(parsed.getTime()) ? null : parsed;
}

export function parseDlqRecord(record: KafkaRecord): DlqRecord {
  const headers = record.headers;
  return {
    topic: record.topic,
    partition: record.partition,
    offset: record.offset,
    time: date(headers[DLQ_HEADERS.failedAt]) ?? date(record.timestamp) ?? new Date(0),
    key: record.key,
    value: record.value,
    headers,
    code: headers[DLQ_HEADERS.errorCode] || UNKNOWN_CODE,
    reason: headers[DLQ_HEADERS.errorMessage] ?? '',
    attempts: integer(headers[DLQ_HEADERS.attempts]),
    service: headers[DLQ_HEADERS.service] ?? null,
    source: {
      topic: headers[DLQ_HEADERS.sourceTopic] ?? null,
      partition: integer(headers[DLQ_HEADERS.sourcePartition]),
      offset: headers[DLQ_HEADERS.sourceOffset] ?? null,
    },
  };
}

export function summarize(record: DlqRecord): DlqRecordSummary {
  const { value, ...rest } = record;
  return { ...rest, valueSize: value?.length ?? 0 };
}

/** `name` as a DLQ topic: `.dlq` appended unless there, `prefix` (TOPIC_PREFIX) prepended unless there. */
export function dlqTopicName(name: string, prefix = ''): string {
  const withPrefix = name.startsWith(prefix) ? name : `${prefix}${name}`;
  return withPrefix.endsWith(DLQ_SUFFIX) ? withPrefix : `${withPrefix}${DLQ_SUFFIX}`;
}

/** The topic a DLQ belongs to, the only one its records are replayed to. */
export function sourceTopicOf(dlqTopic: string): string {
  if (!dlqTopic.endsWith(DLQ_SUFFIX) || dlqTopic.length === DLQ_SUFFIX.length) {
    throw permanentError('DLQ_USAGE', `"${dlqTopic}" is not a dead-letter topic (expected <topic>${DLQ_SUFFIX})`);
  }
  return dlqTopic.slice(0, -DLQ_SUFFIX.length);
}

export interface DlqFilter {
  /** Records dead-lettered at or after this time. */
  readonly since?: Date;
  /** Records with one of these codes (case-insensitive); any code when empty. */
  readonly codes?: readonly string[];
}

/** `--since`: an ISO-8601 time, or a duration back from `now` such as `90s`, `15m`, `1h`, `2d`. */
export function parseSince(text: string, now: Date = new Date()): Date {
  const trimmed = text.trim();
  // A bare number is neither a time nor a duration with a unit: refused rather than guessed.
  if (/^\d+(\.\d+)?$/.test(trimmed)) throw permanentError('DLQ_USAGE', `--since "${text}" needs a unit (e.g. 30m, 1h, 2d) or an ISO time`);
  const duration = /^\d/.test(trimmed) && !/^\d{4}-/.test(trimmed) ? ms(trimmed as ms.StringValue) : undefined;
  if (duration !== undefined && Number.isFinite(duration) && duration >= 0) return new Date(now.getTime() - duration);
  if (/^\d{4}-\d{2}-\d{2}/.test(trimmed)) {
    const time = new Date(trimmed);
    if (!Number.isNaN(time.getTime())) return time;
  }
  throw permanentError('DLQ_USAGE', `--since "${text}" is neither a duration (e.g. 30m, 1h, 2d) nor an ISO time (e.g. 2026-12-01T08:00:00Z)`);
}

/** `--code A,B` (or repeated): upper-cased, empty entries dropped. */
export function parseCodes(values: readonly string[]): string[] {
  return values.flatMap((v) => v.split(',')).map((c) => c.trim().toUpperCase()).filter((c) => c !== '');
}

export function matchesFilter(record: Pick<DlqRecord, 'time' | 'code'>, filter: DlqFilter): boolean {
  if (filter.since !== undefined && record.time.getTime() < filter.since.getTime()) return false;
  if (filter.codes !== undefined && filter.codes.length > 0 && !filter.codes.includes(record.code.toUpperCase())) return false;
  return true;
}

/** A record of a DLQ topic: its partition and offset. */
export interface RecordRef {
  readonly partition: number;
  readonly offset: string;
}

export const refText = (ref: RecordRef) => `${ref.partition}/${ref.offset}`;

/**
 * `--offset` values as records: `P/O` (as `list` prints them) or a bare offset `O` in `partition`,
 * which may be left out only when the topic has a single partition. Comma-separated lists allowed.
 */
export function parseRecordRefs(values: readonly string[], partition: number | undefined, partitionCount: number): RecordRef[] {
  const refs: RecordRef[] = [];
  for (const value of values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '')) {
    const match = /^(?:(\d+)\/)?(\d+)$/.exec(value);
    if (!match) throw permanentError('DLQ_USAGE', `--offset "${value}" is not an offset (e.g. 17) or partition/offset (e.g. 3/17)`);
    const p = match[1] !== undefined ? Number(match[1]) : partition ?? (partitionCount === 1 ? 0 : undefined);
    if (p === undefined) throw permanentError('DLQ_USAGE', `--offset ${value}: the topic has ${partitionCount} partitions; give --partition or write partition/offset (e.g. 3/${value})`);
    if (p >= partitionCount) throw permanentError('DLQ_USAGE', `--offset ${value}: partition ${p} does not exist (the topic has ${partitionCount})`);
    const offset = String(BigInt(match[2] as string));
    if (!refs.some((r) => r.partition === p && r.offset === offset)) refs.push({ partition: p, offset });
  }
  return refs;
}

/**
 * The record to send back to the source topic: the original key, value and headers (the DLQ's own
 * headers removed) plus `REPLAY_HEADER`. A replayed record that fails again is dead-lettered anew
 * and keeps this marker, so its history shows.
 */
export function replayRecord(record: DlqRecord): OutgoingRecord {
  const headers: Headers = {};
  for (const [name, value] of Object.entries(record.headers)) if (!DLQ_OWN_HEADERS.has(name)) headers[name] = value;
  headers[REPLAY_HEADER] = `${record.topic}/${record.partition}/${record.offset}`;
  return { key: record.key, value: record.value, headers };
}

/** Bytes as text when they are printable UTF-8, else null. */
export function printableText(bytes: Buffer): string | null {
  const text = bytes.toString('utf8');
  for (const char of text) {
    const code = char.codePointAt(0) as number;
    // U+FFFD: invalid UTF-8; control characters other than tab, newline and return: binary.
    if (code === 0xfffd || code === 0x7f || (code < 0x20 && code !== 0x09 && code !== 0x0a && code !== 0x0d)) return null;
  }
  return text;
}

/** A key for one line of output: its text when printable, else `0x` + hex. */
export function keyText(key: Buffer | null): string {
  if (key === null) return '(null)';
  return printableText(key) ?? `0x${key.toString('hex')}`;
}

/** A short, one-line form of a reason. */
export function shortReason(reason: string, max = 80): string {
  const line = reason.replace(/\s+/g, ' ').trim();
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`;
}
