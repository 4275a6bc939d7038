import type { ConsumerClient } from '../kafka/types.ts';

/**
 * Why each partition of one topic is paused (retry backoff, a dependency wait, safe mode, …):
 * fetching resumes only when no reason is left. The per-record check (`anyPaused`) is a counter
 * read while nothing is paused, the common case.
 */
export class PauseTracker {
  readonly #consumer: ConsumerClient;
  readonly #topic: string;
  readonly #running: () => boolean;
  readonly #onChange: () => void;
  readonly #reasons = new Map<number, Set<string>>();
  readonly #topicReasons = new Set<string>();
  /** Partitions with at least one reason. */
  #pausedPartitions = 0;

  constructor(consumer: ConsumerClient, topic: string, running: () => boolean, onChange: () => void) {
    this.#consumer = consumer;
    this.#topic = topic;
    this.#running = running;
    this.#onChange = onChange;
  }

  /** False while nothing at all is paused: the per-record check stops there. */
  anyPaused(): boolean {
    return this.#topicReasons.size > 0 || this.#pausedPartitions > 0;
  }

  isPaused(partition: number): boolean {
    return this.#topicReasons.size > 0 || (this.#pausedPartitions > 0 && (this.#reasons.get(partition)?.size ?? 0) > 0);
  }

  topicPaused(): boolean {
    return this.#topicReasons.size > 0;
  }

  /** Paused partitions among `assigned` (all of them while the whole topic is paused). */
  pausedCount(assigned: number): number {
    return this.#topicReasons.size > 0 ? assigned : this.#pausedPartitions;
  }

  pause(partition: number, reason: string): void {
    let reasons = this.#reasons.get(partition);
    if (!reasons) this.#reasons.set(partition, (reasons = new Set()));
    if (reasons.size === 0) this.#pausedPartitions++;
    reasons.add(reason);
    this.#consumer.pause(this.#topic, [partition]);
    this.#onChange();
  }

  resume(partition: number, reason: string): void {
    const reasons = this.#reasons.get(partition);
    if (reasons?.delete(reason) && reasons.size === 0) this.#pausedPartitions--;
    if (this.#running() && !this.isPaused(partition)) this.#consumer.resume(this.#topic, [partition]);
    this.#onChange();
  }

  pauseAll(reason: string): void {
    this.#topicReasons.add(reason);
    if (this.#running()) this.#consumer.pause(this.#topic);
    this.#onChange();
  }

  resumeAll(reason: string): void {
    this.#topicReasons.delete(reason);
    if (this.#running() && this.#topicReasons.size === 0) {
      const stillPaused = [...this.#reasons.entries()].filter(([, r]) => r.size > 0).map(([p]) => p);
      this.#consumer.resume(this.#topic);
      if (stillPaused.length > 0) this.#consumer.pause(this.#topic, stillPaused);
    }
    this.#onChange();
  }
}
