import type { ConsumerClient } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import { errorMessage } from '../errors.ts';

/**
 * Where each partition of one topic stands: the next offset to process (a fetch made before a seek
 * can still arrive; records below it were handled, or wait for their retry, and are skipped) and the
 * offsets handled but not committed yet. Commits are batched: at most one per `intervalMs`, and
 * always on drain; a crash re-delivers at most that window (handlers are idempotent).
 *
 * A partition may have a commit limit (`limit`): reading goes on past it, but its commits stop there
 * until the limit is raised (a handler that makes records durable later than it reads them, as the
 * archiver does with its files). Without one, the commit is the handled position, as before.
 * Commits never move backwards within this member's ownership of a partition.
 */
export class PartitionOffsets {
  readonly #consumer: ConsumerClient;
  readonly #topic: string;
  readonly #log: Logger;
  readonly intervalMs: number;
  readonly #positions = new Map<number, bigint>();
  readonly #pending = new Map<number, string>();
  /** Commits of these partitions stop at the limit (the next offset that may be committed). */
  readonly #limits = new Map<number, bigint>();
  /** The highest commit made or pending per partition, so a lower limit never moves one back. */
  readonly #committed = new Map<number, bigint>();
  #lastCommitAt = Date.now();

  constructor(consumer: ConsumerClient, topic: string, intervalMs: number, log: Logger) {
    this.#consumer = consumer;
    this.#topic = topic;
    this.intervalMs = intervalMs;
    this.#log = log;
  }

  position(partition: number): bigint | undefined {
    return this.#positions.get(partition);
  }

  /** The partition rewinds to `offset` (a retry): later records of an earlier fetch are skipped until then. */
  rewind(partition: number, offset: string): void {
    this.#positions.set(partition, BigInt(offset));
    this.#consumer.seek(this.#topic, partition, offset);
  }

  /** Records up to `next` - 1 are done: `next` is the partition's position (unless it rewound) and its commit. */
  handled(partition: number, next: bigint, rewound: boolean): void {
    if (!rewound) this.#positions.set(partition, next);
    const limit = this.#limits.get(partition);
    this.#commit(partition, limit !== undefined && limit < next ? limit : next);
  }

  /**
   * From now on, commits of the partition go no further than `next` (records below it are durable).
   * With `handledUpTo` (the partition's handled position, when known), the commit moves to
   * min(next, handledUpTo) at once: a limit raised outside a batch (an idle partition's last file).
   */
  limit(partition: number, next: bigint, handledUpTo?: bigint): void {
    this.#limits.set(partition, next);
    if (handledUpTo !== undefined) this.#commit(partition, next < handledUpTo ? next : handledUpTo);
  }

  #commit(partition: number, next: bigint): void {
    const previous = this.#committed.get(partition);
    if (previous !== undefined && next <= previous) return;
    this.#committed.set(partition, next);
    this.#pending.set(partition, next.toString());
  }

  commitDue(): boolean {
    return Date.now() - this.#lastCommitAt >= this.intervalMs;
  }

  /** After a rebalance: positions are re-read from Kafka, and partitions this member lost cannot be committed by it. */
  reassigned(assigned: readonly number[]): void {
    this.#positions.clear();
    for (const partition of this.#pending.keys()) if (!assigned.includes(partition)) this.#pending.delete(partition);
    // A partition that comes back may have been committed further by another member meanwhile.
    for (const map of [this.#limits, this.#committed]) for (const partition of map.keys()) if (!assigned.includes(partition)) map.delete(partition);
  }

  async flush(): Promise<void> {
    this.#lastCommitAt = Date.now();
    if (this.#pending.size === 0) return;
    const offsets = [...this.#pending.entries()].map(([partition, offset]) => ({ topic: this.#topic, partition, offset }));
    this.#pending.clear();
    try {
      await this.#consumer.commit(offsets);
    } catch (error) {
      // A rebalance took a partition: its next owner re-reads from the last commit (at-least-once).
      // Forgotten as committed, so a later commit of the same offset (an idle partition's) is tried again.
      for (const { partition, offset } of offsets) if (this.#committed.get(partition) === BigInt(offset)) this.#committed.delete(partition);
      this.#log.warn({ offsets, err: errorMessage(error) }, 'offset commit failed');
    }
  }
}
