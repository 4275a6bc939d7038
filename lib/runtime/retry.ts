/** Exponential backoff with a cap and full jitter on the upper half (avoids retry storms). */
export interface RetryPolicy {
  /** Attempts in all, the first included, before a retryable failure is dead-lettered. Default 5. */
  readonly maxAttempts: number;
  /** Delay before the 2nd attempt. Default 200 ms. */
  readonly initialDelayMs: number;
  /** Growth per attempt. Default 2. */
  readonly multiplier: number;
  /** Upper bound of one delay. Default 30 s. */
  readonly maxDelayMs: number;
  /**
   * Upper bound of one delay while a dependency is down (those retries never end and never count
   * toward `maxAttempts`): also the longest a partition stays idle after the dependency is back. Default 10 s.
   */
  readonly unavailableMaxDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 5, initialDelayMs: 200, multiplier: 2, maxDelayMs: 30_000, unavailableMaxDelayMs: 10_000 };

/** Delay before attempt `failedAttempts + 1`, given `failedAttempts` ≥ 1 failures so far. */
export function backoffDelayMs(failedAttempts: number, policy: Pick<RetryPolicy, 'initialDelayMs' | 'multiplier' | 'maxDelayMs'>, random: () => number = Math.random): number {
  const exponential = policy.initialDelayMs * policy.multiplier ** Math.max(0, failedAttempts - 1);
  const capped = Math.min(policy.maxDelayMs, exponential);
  return Math.round(capped / 2 + (capped / 2) * random());
}
