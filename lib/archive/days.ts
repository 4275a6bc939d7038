/**
 * When a partition's archive day closes. Pure: no I/O; time comes in as arguments.
 *
 * A day is the broker's append time in UTC (LogAppendTime on `audit-events`), so within a partition
 * days follow offset order. A partition's day closes when a record of a later day arrives on it, or,
 * when the partition is idle and caught up, once the wall clock has passed the day's end plus
 * `ARCHIVE_DAY_GRACE_MS` (time for a record appended just before midnight to reach the archiver).
 * A day with no record on a partition closes too (with no file), so a day closes on every partition.
 * A day is closed when it has closed on every partition of the topic.
 */
import { configFields } from '../config.ts';
import { dayStart, nextDay } from './layout.ts';

export const archiveDayConfigShape = {
  /** How long past midnight UTC an idle, caught-up partition waits before closing the day. */
  ARCHIVE_DAY_GRACE_MS: configFields.nonNegativeInt(5 * 60_000),
};

const DAY_MS = 86_400_000;

/** The days that `from` up to, not including, `until` span: the days a record of day `until` closes. */
export function daysBetween(from: string, until: string): string[] {
  const days: string[] = [];
  for (let day = from; day < until; day = nextDay(day)) days.push(day);
  return days;
}

/**
 * One partition's open day. `record` with each record's day (as FileRotation assigns it) returns
 * the days that closed before it; `tick` the days an idle, caught-up partition closes by the clock.
 */
export class PartitionDays {
  private day: string | undefined;
  private readonly graceMs: number;

  /**
   * @param openDay the partition's first day not closed yet (the day after its last closed day, or
   * the day of its last archived file), or undefined when nothing is known: the first record's day.
   */
  constructor(graceMs: number, openDay?: string) {
    this.graceMs = graceMs;
    this.day = openDay;
  }

  /** The day records are archived into now; undefined before the first record of a new partition. */
  get openDay(): string | undefined {
    return this.day;
  }

  /** The days closed by a record of `day` arriving: every open day before it. */
  record(day: string): string[] {
    if (this.day === undefined || day <= this.day) {
      this.day ??= day;
      return [];
    }
    const closed = daysBetween(this.day, day);
    this.day = day;
    return closed;
  }

  /** Opens `day` on a partition that has none yet (no record, nothing closed); no-op otherwise. */
  adopt(day: string): void {
    this.day ??= day;
  }

  /** The days closed by the clock on an idle, caught-up partition: each one whose end plus the grace is past. */
  tick(now: number, caughtUp: boolean): string[] {
    if (!caughtUp || this.day === undefined) return [];
    const closed: string[] = [];
    while (this.day !== undefined && now >= dayStart(this.day) + DAY_MS + this.graceMs) {
      closed.push(this.day);
      this.day = nextDay(this.day);
    }
    return closed;
  }
}

/** Whether a day is closed: it has closed on every partition of the topic. */
export function dayClosed(closedPartitions: ReadonlySet<number>, partitionCount: number): boolean {
  for (let p = 0; p < partitionCount; p++) if (!closedPartitions.has(p)) return false;
  return true;
}
