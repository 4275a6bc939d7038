/**
 * Where one partition's archive files begin and end. Pure: no I/O; time comes in as arguments.
 *
 * A file is cut when the next record would not belong with it: it falls in another flush window
 * (`ARCHIVE_FLUSH_INTERVAL_MS`-wide windows of the records' own timestamps, the broker's append
 * time), on another day, in another writer schema, or the file has reached its record count or byte
 * size. Every one of these is a function of the records from the file's first one on, never of when
 * the archiver happened to read them, so any instance that reads the partition from the same file
 * boundary cuts the same files: a restarted archiver, or a zombie that lost the partition without
 * knowing it, writes the same keys with the same bytes (an upload that finds them is a no-op), never
 * an overlapping range. Only the last file of an idle partition is cut by the wall clock: once the
 * partition is caught up and its window has ended, plus a grace for records still being appended.
 */
import { z } from 'zod';
import { configFields } from '../config.ts';
import { utcDay } from './layout.ts';

export const archiveRotationConfigShape = {
  /** Width of a flush window of record time: a file never spans two windows (the 60 s). */
  ARCHIVE_FLUSH_INTERVAL_MS: configFields.positiveInt(60_000),
  /** Records per file at most. */
  ARCHIVE_MAX_FILE_RECORDS: configFields.positiveInt(100_000),
  /** Uncompressed bytes of records per file, after which the file is cut (the file is smaller). */
  ARCHIVE_MAX_FILE_BYTES: configFields.positiveInt(64 * 1024 * 1024),
  /** How long past a window's end an idle, caught-up partition waits before cutting its last file. */
  ARCHIVE_WINDOW_GRACE_MS: configFields.nonNegativeInt(5_000),
};

export type ArchiveRotationConfig = z.infer<z.ZodObject<typeof archiveRotationConfigShape>>;

export interface RotationLimits {
  readonly flushIntervalMs: number;
  readonly maxRecords: number;
  readonly maxBytes: number;
  readonly windowGraceMs: number;
}

export function rotationLimitsOf(config: ArchiveRotationConfig): RotationLimits {
  return {
    flushIntervalMs: config.ARCHIVE_FLUSH_INTERVAL_MS,
    maxRecords: config.ARCHIVE_MAX_FILE_RECORDS,
    maxBytes: config.ARCHIVE_MAX_FILE_BYTES,
    windowGraceMs: config.ARCHIVE_WINDOW_GRACE_MS,
  };
}

/** What the rotation needs of a record. */
export interface RotationRecord {
  readonly offset: number;
  /** The Kafka timestamp (LogAppendTime), epoch milliseconds. */
  readonly timestamp: number;
  /** Its encoded size in the file (uncompressed). */
  readonly bytes: number;
  /** The registry id of the event's writer schema. */
  readonly schemaId: number;
}

/** The file being filled. */
export interface OpenFile {
  /** The day folder: the first record's UTC day, never before the partition's previous file's day. */
  readonly day: string;
  /** Start of the first record's flush window (epoch ms). */
  readonly windowStart: number;
  readonly schemaId: number;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly count: number;
  readonly bytes: number;
}

export type CutReason = 'window' | 'day' | 'schema' | 'count' | 'size' | 'idle' | 'day-close';

export interface Cut {
  readonly reason: CutReason;
  /** The file to write: the buffered records from `file.firstOffset` to `file.lastOffset`. */
  readonly file: OpenFile;
}

export function windowStartOf(timestamp: number, flushIntervalMs: number): number {
  return Math.floor(timestamp / flushIntervalMs) * flushIntervalMs;
}

/**
 * One partition's file boundaries. `add` each record in offset order: it returns the cuts to make, in
 * order (the file before the record, when the record does not belong with it; the file ending with
 * the record, when it is full). `tick` cuts the last file of an idle, caught-up partition.
 */
export class FileRotation {
  private current: OpenFile | undefined;
  private lastDay: string | undefined;
  private readonly limits: RotationLimits;

  /**
   * @param previousDay the day of the partition's last archived file (where the archiver resumes):
   * days never go back within a partition, whatever a broker clock did, so the resume point is always
   * in the latest day folder.
   */
  constructor(limits: RotationLimits, previousDay?: string) {
    this.limits = limits;
    this.lastDay = previousDay;
  }

  /** The file being filled, if any. */
  get open(): OpenFile | undefined {
    return this.current;
  }

  /** The day a record at `timestamp` goes to: its UTC day, or the partition's last day if that is later. */
  dayOf(timestamp: number): string {
    const day = utcDay(timestamp);
    return this.lastDay !== undefined && this.lastDay > day ? this.lastDay : day;
  }

  /** Days never go back: after `day` closed on the partition, no file goes into it or an earlier day. */
  advanceDay(day: string): void {
    if (this.lastDay === undefined || day > this.lastDay) this.lastDay = day;
  }

  add(record: RotationRecord): Cut[] {
    const cuts: Cut[] = [];
    const windowStart = windowStartOf(record.timestamp, this.limits.flushIntervalMs);
    const day = this.dayOf(record.timestamp);
    const open = this.current;
    if (open !== undefined) {
      const reason: CutReason | undefined =
        day !== open.day ? 'day' : windowStart !== open.windowStart ? 'window' : record.schemaId !== open.schemaId ? 'schema' : undefined;
      if (reason !== undefined) cuts.push(this.cut(reason));
    }
    const file = this.current;
    this.current =
      file === undefined
        ? { day, windowStart, schemaId: record.schemaId, firstOffset: record.offset, lastOffset: record.offset, count: 1, bytes: record.bytes }
        : { ...file, lastOffset: record.offset, count: file.count + 1, bytes: file.bytes + record.bytes };
    this.lastDay = day;
    if (this.current.count >= this.limits.maxRecords) cuts.push(this.cut('count'));
    else if (this.current.bytes >= this.limits.maxBytes) cuts.push(this.cut('size'));
    return cuts;
  }

  /**
   * The cut of an idle partition's last file: when the partition is caught up (its consumer has read
   * to the end) and the wall clock is past the file's window plus the grace, no record of that window
   * can still come.
   */
  tick(now: number, caughtUp: boolean): Cut[] {
    const open = this.current;
    if (open === undefined || !caughtUp) return [];
    if (now < open.windowStart + this.limits.flushIntervalMs + this.limits.windowGraceMs) return [];
    return [this.cut('idle')];
  }

  /** Cuts the open file whatever its window (the partition's day is closing). */
  flush(reason: CutReason): Cut[] {
    return this.current === undefined ? [] : [this.cut(reason)];
  }

  private cut(reason: CutReason): Cut {
    const file = this.current;
    if (file === undefined) throw new Error('no open file to cut');
    this.current = undefined;
    return { reason, file };
  }
}
