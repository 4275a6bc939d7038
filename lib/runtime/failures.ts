import type { Gauge } from 'prom-client';

/** How the record at the head of a partition has failed so far. */
export interface HeadFailure {
  readonly offset: string;
  /** Failures of the record itself: they count toward the dead-letter budget. */
  attempts: number;
  /** Consecutive waits for a dependency: they never count toward the budget (capped backoff, forever). */
  waits: number;
  /**
   * The error to dead-letter with, once the budget is spent but the dead-letter write failed: the
   * next delivery goes straight to the DLQ instead of running the handler (and a fresh budget) again.
   */
  deadLetterPending: Error | undefined;
}

/**
 * Failures of the head record of each partition, kept OUTSIDE the per-assignment state: a rebalance
 * that hands the partition back to this member, or a failed dead-letter write, must not reset the
 * count (else a retryable poison record cycles forever). Keyed by partition and checked against the
 * offset, so an entry is bounded by the partition count and a stale one never matches another record.
 * (A header cannot carry the count: the record is re-read from Kafka, not re-produced. A partition
 * moved to another member starts that member's count afresh, so the budget is per member, at worst.)
 *
 * Also tracks which partitions wait on which dependency, in the `blocked` gauge (readiness reads it).
 */
export class FailureLedger {
  readonly #heads = new Map<number, HeadFailure>();
  readonly #waiting = new Map<number, string>();
  readonly #blocked: Gauge<'topic' | 'dependency'>;
  readonly #topic: string;

  constructor(blocked: Gauge<'topic' | 'dependency'>, topic: string) {
    this.#blocked = blocked;
    this.#topic = topic;
  }

  /** The partition's head failure, whatever its offset (the caller compares it). */
  head(partition: number): HeadFailure | undefined {
    return this.#heads.get(partition);
  }

  /** The failure entry of the record at `offset`, made when the partition's head moved on. */
  entryFor(partition: number, offset: string): HeadFailure {
    const current = this.#heads.get(partition);
    if (current !== undefined && current.offset === offset) return current;
    const entry: HeadFailure = { offset, attempts: 0, waits: 0, deadLetterPending: undefined };
    this.#heads.set(partition, entry);
    return entry;
  }

  /** The record at the head is done (handled or dead-lettered). */
  clear(partition: number): void {
    this.#heads.delete(partition);
    this.endWait(partition);
  }

  /** The partition waits on `dependency`; true when it was not waiting on it already. */
  wait(partition: number, dependency: string): boolean {
    const previous = this.#waiting.get(partition);
    if (previous === dependency) return false;
    if (previous !== undefined) this.#blocked.dec({ topic: this.#topic, dependency: previous });
    this.#waiting.set(partition, dependency);
    this.#blocked.inc({ topic: this.#topic, dependency });
    return true;
  }

  /** The partition no longer waits on a dependency; returns what it waited on. */
  endWait(partition: number): string | undefined {
    const previous = this.#waiting.get(partition);
    if (previous === undefined) return undefined;
    this.#waiting.delete(partition);
    this.#blocked.dec({ topic: this.#topic, dependency: previous });
    return previous;
  }

  /** Waits end on partitions this member lost (their attempt counts are kept). */
  reassigned(assigned: readonly number[]): void {
    for (const partition of [...this.#waiting.keys()]) if (!assigned.includes(partition)) this.endWait(partition);
  }

  endAllWaits(): void {
    for (const partition of [...this.#waiting.keys()]) this.endWait(partition);
  }
}
