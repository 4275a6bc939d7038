/**
 * One partition of `audit-events` on its way to the archive: records are buffered in offset order,
 * cut into files by FileRotation, each file uploaded once (putArchiveObject: an existing object with
 * the same bytes is a no-op) and recorded in audit_files, and the partition's days closed by
 * PartitionDays. `committable()` says how far the consumer may commit: never past a record that is
 * not in a durable file, so a crash re-reads every record that is not archived yet.
 *
 * Resuming (after a crash, a rebalance) starts from the archive itself: the records below
 * `resume.nextOffset` (after the highest archived file) are in S3 already and are skipped.
 *
 * Each file carries the partition's hash chain (lib/archive/chain.ts) over its records' event hashes,
 * continuing from the previous file's last value (`resume.chain` after a restart): the chain moves
 * only when a file is durable, so a retried or re-read file gets the same chain and the same bytes.
 */
import { GENESIS_CHAIN } from '../../lib/archive/chain.ts';
import { encodeChainedArchiveFile, type KafkaHeader } from '../../lib/archive/container.ts';
import { PartitionDays } from '../../lib/archive/days.ts';
import { formatArchiveKey } from '../../lib/archive/layout.ts';
import type { ArchivedObject } from '../../lib/archive/objects.ts';
import { FileRotation, type Cut, type RotationLimits } from '../../lib/archive/rotation.ts';
import type { ArchiveFileRow } from '../../lib/archive/index-store.ts';
import { permanentError } from '../../lib/errors.ts';

/** A Kafka record of audit-events as the archiver keeps it. */
export interface ArchiverRecord {
  readonly offset: number;
  /** The broker's append time, epoch milliseconds. */
  readonly timestamp: number;
  readonly key: Buffer | null;
  readonly headers: readonly KafkaHeader[];
  /** The value as produced: the registry's 5-byte header (magic 0, schema id) and the Avro body. */
  readonly value: Buffer;
}

/** What a partition archiver does outside itself (S3, the registry, Postgres). */
export interface PartitionArchiverDeps {
  /** Writes an object once (putArchiveObject on the archive bucket). */
  putObject(key: string, body: Buffer): Promise<ArchivedObject>;
  /** The writer schema (JSON text) of a registry schema id; the same text for the same id, always. */
  writerSchema(schemaId: number): Promise<string>;
  recordFile(file: ArchiveFileRow): Promise<void>;
  /** The day closed on this partition (audit_partition_days, then audit_days when every partition has). */
  closeDay(day: string, partition: number): Promise<void>;
  /** The archive's earliest day not closed on every partition (undefined: nothing archived yet). */
  earliestOpenDay(): Promise<string | undefined>;
  /** Told of each file once it is durable and recorded (metrics, logs, tests). */
  fileWritten?(file: WrittenFile): void;
}

export interface PartitionArchiverOptions {
  readonly topic: string;
  readonly partition: number;
  /** The archive's root in its bucket (`audit-events`). */
  readonly prefix: string;
  readonly limits: RotationLimits;
  readonly dayGraceMs: number;
  readonly codec?: 'deflate' | 'null';
}

/** Where a partition resumes: from the archive (S3) and the closed days (Postgres). */
export interface ResumePoint {
  /** The first offset not archived: the highest archived file's last offset + 1, or 0. */
  readonly nextOffset: number;
  /** The day of the highest archived file: no later file goes into an earlier day. */
  readonly lastFileDay: string | undefined;
  /** The first day not closed on the partition, if known. */
  readonly openDay: string | undefined;
  /** The hash chain after the highest archived file's last record (GENESIS_CHAIN when none); default GENESIS_CHAIN. */
  readonly chain?: string;
}

export interface WrittenFile {
  readonly key: string;
  readonly reason: Cut['reason'];
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly count: number;
  readonly bytes: number;
  readonly outcome: ArchivedObject['outcome'];
  readonly firstChain: string;
  readonly lastChain: string;
}

const HEADER_BYTES = 5;

export function schemaIdOf(value: Buffer): number {
  if (value.length < HEADER_BYTES || value[0] !== 0) throw permanentError('DECODE_BAD_FRAMING', `not a Confluent-framed Avro record (${value.length} bytes)`);
  return value.readUInt32BE(1);
}

/** A record's size as the rotation counts it: a function of the record alone, so files are cut the same way by every reader. */
export function recordBytes(record: ArchiverRecord): number {
  let bytes = record.value.length - HEADER_BYTES + (record.key?.length ?? 0) + 24;
  for (const header of record.headers) bytes += header.key.length + (header.value?.length ?? 0) + 4;
  return bytes;
}

export class PartitionArchiver {
  readonly #options: PartitionArchiverOptions;
  readonly #deps: PartitionArchiverDeps;
  readonly #rotation: FileRotation;
  readonly #days: PartitionDays;
  /** Records not in a durable file yet, in offset order. */
  #buffer: ArchiverRecord[] = [];
  /** Cut files and days to close, in order, not done yet (a failed upload is retried first next time). */
  #pending: ({ kind: 'file'; cut: Cut } | { kind: 'day'; day: string })[] = [];
  /** The next offset this archiver expects: lower ones are archived or buffered already. */
  #next: number;
  /** The chain after the last durable file's last record. */
  #chain: string;

  constructor(options: PartitionArchiverOptions, deps: PartitionArchiverDeps, resume: ResumePoint) {
    this.#options = options;
    this.#deps = deps;
    this.#next = resume.nextOffset;
    this.#chain = resume.chain ?? GENESIS_CHAIN;
    const openDay = resume.openDay !== undefined && (resume.lastFileDay === undefined || resume.openDay > resume.lastFileDay) ? resume.openDay : resume.lastFileDay;
    this.#rotation = new FileRotation(options.limits, openDay);
    this.#days = new PartitionDays(options.dayGraceMs, openDay);
  }

  /** The next offset not archived or buffered. */
  get nextOffset(): number {
    return this.#next;
  }

  /** The hash chain after the last durable file (what the next file continues). */
  get chain(): string {
    return this.#chain;
  }

  /** Records read but not in a durable file yet. */
  get bufferedCount(): number {
    return this.#buffer.length;
  }

  /** The first day not closed on this partition (undefined before any record). */
  get openDay(): string | undefined {
    return this.#days.openDay;
  }

  /**
   * The offset the consumer may commit: the first record not in a durable file, or undefined when
   * every record seen is archived (commit what the batch reached).
   */
  committable(): number | undefined {
    return this.#buffer[0]?.offset;
  }

  /**
   * Takes a batch's records (in offset order; already archived or buffered ones are skipped, so a
   * retried batch is harmless) and writes every file they complete. Throws when an upload or a write
   * to Postgres fails: what was not done is retried by the next call.
   */
  async add(records: readonly ArchiverRecord[]): Promise<void> {
    await this.#drain();
    for (const record of records) {
      if (record.offset < this.#next) continue;
      this.#next = record.offset + 1;
      this.#buffer.push(record);
      const schemaId = schemaIdOf(record.value);
      const day = this.#rotation.dayOf(record.timestamp);
      const cuts = this.#rotation.add({ offset: record.offset, timestamp: record.timestamp, bytes: recordBytes(record), schemaId });
      // The file before the record (cut because the record starts another) precedes any day it closes.
      for (const cut of cuts) if (cut.file.lastOffset < record.offset) this.#pending.push({ kind: 'file', cut });
      for (const closed of this.#days.record(day)) this.#pending.push({ kind: 'day', day: closed });
      for (const cut of cuts) if (cut.file.lastOffset === record.offset) this.#pending.push({ kind: 'file', cut });
    }
    await this.#drain();
  }

  /** The clock's part: the last file of an idle, caught-up partition, and days that end while it is idle. */
  async tick(now: number, caughtUp: boolean): Promise<void> {
    await this.#drain();
    // A partition that never had a record has no day to close, and would keep every day from
    // closing on all partitions: once caught up, and once anything is archived, it opens the
    // archive's earliest open day and closes days by the clock from there like any idle partition.
    // (Known gap: a partition still working through an older backlog day that no file records yet
    // is not seen; that day then never closes on this partition.)
    if (caughtUp && this.#days.openDay === undefined) {
      const open = await this.#deps.earliestOpenDay();
      if (open !== undefined) {
        this.#days.adopt(open);
        this.#rotation.advanceDay(open);
      }
    }
    for (const cut of this.#rotation.tick(now, caughtUp)) this.#pending.push({ kind: 'file', cut });
    const closing = this.#days.tick(now, caughtUp);
    if (closing.length > 0) {
      for (const cut of this.#rotation.flush('day-close')) this.#pending.push({ kind: 'file', cut });
      for (const day of closing) this.#pending.push({ kind: 'day', day });
      const open = this.#days.openDay;
      if (open !== undefined) this.#rotation.advanceDay(open);
    }
    await this.#drain();
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0) {
      const step = this.#pending[0];
      if (step === undefined) break;
      if (step.kind === 'file') await this.#writeFile(step.cut);
      else {
        await this.#deps.closeDay(step.day, this.#options.partition);
      }
      this.#pending.shift();
    }
  }

  async #writeFile(cut: Cut): Promise<void> {
    const { file } = cut;
    const records = this.#buffer.filter((r) => r.offset >= file.firstOffset && r.offset <= file.lastOffset);
    if (records.length !== file.count || records[0]?.offset !== file.firstOffset) {
      throw permanentError('ARCHIVE_BUFFER_INCONSISTENT', `partition ${this.#options.partition}: file ${file.firstOffset}-${file.lastOffset} should hold ${file.count} buffered records, found ${records.length}`);
    }
    const key = formatArchiveKey({ prefix: this.#options.prefix, day: file.day, partition: this.#options.partition, firstOffset: file.firstOffset, lastOffset: file.lastOffset });
    const { body, chain } = encodeChainedArchiveFile({
      chainBefore: this.#chain,
      objectKey: key,
      topic: this.#options.topic,
      partition: this.#options.partition,
      schemaId: file.schemaId,
      eventSchema: await this.#deps.writerSchema(file.schemaId),
      records: records.map((r) => ({ offset: r.offset, timestamp: r.timestamp, key: r.key, headers: r.headers, event: r.value.subarray(HEADER_BYTES) })),
      ...(this.#options.codec !== undefined ? { codec: this.#options.codec } : {}),
    });
    const put = await this.#deps.putObject(key, body);
    await this.#deps.recordFile({
      objectKey: key,
      day: file.day,
      partition: this.#options.partition,
      firstOffset: file.firstOffset,
      lastOffset: file.lastOffset,
      recordCount: file.count,
      bytes: body.length,
      sha256: put.checksumSha256,
      versionId: put.versionId,
      firstChain: chain.first,
      lastChain: chain.last,
    });
    // Durable: its records leave the buffer, the commit point moves past them, the chain continues after them.
    this.#buffer = this.#buffer.filter((r) => r.offset > file.lastOffset);
    this.#chain = chain.last;
    this.#deps.fileWritten?.({ key, reason: cut.reason, firstOffset: file.firstOffset, lastOffset: file.lastOffset, count: file.count, bytes: body.length, outcome: put.outcome, firstChain: chain.first, lastChain: chain.last });
  }
}
