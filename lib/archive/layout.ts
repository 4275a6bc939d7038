/**
 * Where the archive keeps its files: `<prefix>/dt=YYYY-MM-DD/p=<partition>/<firstOffset>-<lastOffset>.avro`,
 * offsets zero-padded to 20 digits so that the keys of one folder sort as their offsets do (Hive-style
 * `dt=`/`p=` folders: Spark and Athena read them as partition columns).
 */
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { permanentError } from '../errors.ts';
import { s3Failure } from './s3.ts';

/** The default root of the archive in its bucket. */
export const DEFAULT_ARCHIVE_PREFIX = 'audit-events';

/** Digits of an offset in a file name: int64 has at most 19, one spare. */
export const OFFSET_DIGITS = 20;

export interface ArchiveFileName {
  /** The archive's root, without a trailing slash (`audit-events`). */
  readonly prefix: string;
  /** The UTC day of the file's records, `YYYY-MM-DD`. */
  readonly day: string;
  readonly partition: number;
  /** Offsets of the file's first and last records (inclusive). */
  readonly firstOffset: number;
  readonly lastOffset: number;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;
const KEY = /^(?<prefix>.+)\/dt=(?<day>\d{4}-\d{2}-\d{2})\/p=(?<partition>0|[1-9]\d{0,9})\/(?<first>\d{20})-(?<last>\d{20})\.avro$/;

/** Whether `day` is a real calendar day written `YYYY-MM-DD`. */
export function isArchiveDay(day: string): boolean {
  if (!DAY.test(day)) return false;
  const date = new Date(`${day}T00:00:00.000Z`);
  return !Number.isNaN(date.getTime()) && date.toISOString().slice(0, 10) === day;
}

/** The UTC day (`YYYY-MM-DD`) of a time in epoch milliseconds: 23:59:59.999 and 00:00:00.000 are different days. */
export function utcDay(epochMillis: number): string {
  return new Date(epochMillis).toISOString().slice(0, 10);
}

/** Epoch milliseconds of a day's first instant (00:00:00.000 UTC). */
export function dayStart(day: string): number {
  if (!isArchiveDay(day)) throw permanentError('ARCHIVE_DAY_INVALID', `not a day: '${day}' (expected YYYY-MM-DD)`);
  return Date.parse(`${day}T00:00:00.000Z`);
}

/** The day after `day`. */
export function nextDay(day: string): string {
  return utcDay(dayStart(day) + 86_400_000);
}

export function padOffset(offset: number): string {
  if (!Number.isSafeInteger(offset) || offset < 0) throw permanentError('ARCHIVE_OFFSET_INVALID', `not a Kafka offset: ${offset}`);
  return String(offset).padStart(OFFSET_DIGITS, '0');
}

function checkPrefix(prefix: string): void {
  if (prefix === '' || prefix.startsWith('/') || prefix.endsWith('/')) {
    throw permanentError('ARCHIVE_PREFIX_INVALID', `archive prefix '${prefix}': expected a non-empty key prefix without a leading or trailing slash, e.g. audit-events`);
  }
}

/** The folder of one partition's files of one day, with its trailing slash. */
export function partitionDayPrefix(prefix: string, day: string, partition: number): string {
  checkPrefix(prefix);
  if (!isArchiveDay(day)) throw permanentError('ARCHIVE_DAY_INVALID', `not a day: '${day}' (expected YYYY-MM-DD)`);
  if (!Number.isInteger(partition) || partition < 0) throw permanentError('ARCHIVE_PARTITION_INVALID', `not a partition: ${partition}`);
  return `${prefix}/dt=${day}/p=${partition}/`;
}

/** The object key of a file. */
export function formatArchiveKey(name: ArchiveFileName): string {
  if (name.lastOffset < name.firstOffset) {
    throw permanentError('ARCHIVE_OFFSET_INVALID', `file range ${name.firstOffset}-${name.lastOffset}: the last offset is before the first`);
  }
  return `${partitionDayPrefix(name.prefix, name.day, name.partition)}${padOffset(name.firstOffset)}-${padOffset(name.lastOffset)}.avro`;
}

/** The parts of a file's object key, or undefined for a key that is not an archive file. */
export function parseArchiveKey(key: string): ArchiveFileName | undefined {
  const match = KEY.exec(key);
  const groups = match?.groups;
  if (groups === undefined) return undefined;
  const { prefix = '', day = '', partition = '', first = '', last = '' } = groups;
  const firstOffset = Number(first);
  const lastOffset = Number(last);
  if (!isArchiveDay(day) || !Number.isSafeInteger(firstOffset) || !Number.isSafeInteger(lastOffset) || lastOffset < firstOffset) return undefined;
  return { prefix, day, partition: Number(partition), firstOffset, lastOffset };
}

/** Every key under `prefix` (one page at a time, in S3's lexicographic order) and the common prefixes under `delimiter`. */
async function* listPages(s3: S3Client, bucket: string, prefix: string, delimiter?: string): AsyncGenerator<{ keys: string[]; folders: string[] }> {
  let token: string | undefined;
  do {
    let page;
    try {
      page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(delimiter !== undefined ? { Delimiter: delimiter } : {}), ...(token !== undefined ? { ContinuationToken: token } : {}) }));
    } catch (error) {
      throw s3Failure(`ListObjectsV2 s3://${bucket}/${prefix}`, error, { bucket, prefix });
    }
    yield {
      keys: (page.Contents ?? []).flatMap((o) => (o.Key !== undefined ? [o.Key] : [])),
      folders: (page.CommonPrefixes ?? []).flatMap((p) => (p.Prefix !== undefined ? [p.Prefix] : [])),
    };
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
}

/** The days that have a folder under the archive's prefix, oldest first. */
export async function listArchiveDays(s3: S3Client, bucket: string, prefix: string): Promise<string[]> {
  checkPrefix(prefix);
  const days: string[] = [];
  for await (const page of listPages(s3, bucket, `${prefix}/dt=`, '/')) {
    for (const folder of page.folders) {
      const day = folder.slice(`${prefix}/dt=`.length, -1);
      if (isArchiveDay(day)) days.push(day);
    }
  }
  return days.sort();
}

/** The files of one partition on one day, in offset order (keys that are not archive files are skipped). */
export async function listPartitionDayFiles(s3: S3Client, bucket: string, prefix: string, day: string, partition: number): Promise<ArchiveFileName[]> {
  const files: ArchiveFileName[] = [];
  for await (const page of listPages(s3, bucket, partitionDayPrefix(prefix, day, partition))) {
    for (const key of page.keys) {
      const name = parseArchiveKey(key);
      if (name !== undefined && name.prefix === prefix && name.partition === partition && name.day === day) files.push(name);
    }
  }
  return files.sort((a, b) => a.firstOffset - b.firstOffset);
}

/**
 * The file holding the highest archived offset of a partition, or undefined when it has none: the
 * archiver resumes after its `lastOffset` on assignment (the archive, not the consumer group, is the
 * record of progress). Looks at the latest day that has files for the partition: with the broker's
 * append time as the record time (LogAppendTime on the topic), days never go back within a partition,
 * so no earlier day can hold a higher offset.
 */
export async function highestArchivedFile(s3: S3Client, bucket: string, prefix: string, partition: number): Promise<ArchiveFileName | undefined> {
  const days = await listArchiveDays(s3, bucket, prefix);
  for (const day of days.reverse()) {
    const files = await listPartitionDayFiles(s3, bucket, prefix, day, partition);
    const last = files.at(-1);
    if (last !== undefined) return files.reduce((a, b) => (b.lastOffset > a.lastOffset ? b : a), last);
  }
  return undefined;
}

/** Every file of one day, all partitions, in (partition, offset) order. */
export async function listDayFiles(s3: S3Client, bucket: string, prefix: string, day: string): Promise<ArchiveFileName[]> {
  checkPrefix(prefix);
  if (!isArchiveDay(day)) throw permanentError('ARCHIVE_DAY_INVALID', `not a day: '${day}' (expected YYYY-MM-DD)`);
  const files: ArchiveFileName[] = [];
  for await (const page of listPages(s3, bucket, `${prefix}/dt=${day}/`)) {
    for (const key of page.keys) {
      const name = parseArchiveKey(key);
      if (name !== undefined && name.prefix === prefix && name.day === day) files.push(name);
    }
  }
  return files.sort((a, b) => a.partition - b.partition || a.firstOffset - b.firstOffset);
}
