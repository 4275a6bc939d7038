import type { Logger } from '../logger.ts';
import { errorMessage } from '../errors.ts';

/** True when `work` settled (either way) within `ms`; it is not cancelled otherwise. */
export async function settlesWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([work.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export type CleanupStep = readonly [name: string, run: () => Promise<void>];

/**
 * Runs every cleanup step in order, each even when an earlier one failed, within one grace period;
 * returns the failures instead of throwing half-way.
 */
export async function runCleanup(steps: readonly CleanupStep[], graceMs: number, log: Logger, progressEveryMs = 5_000): Promise<string[]> {
  const deadline = Date.now() + graceMs;
  const failures: string[] = [];
  for (const [name, step] of steps) {
    const began = Date.now();
    const remaining = Math.max(1, deadline - began);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`did not finish within the shutdown grace (${graceMs} ms)`)), remaining);
    });
    // A slow step is named while it runs (at warn: a drain that overruns must say where it waits).
    const progress = setInterval(() => log.warn({ step: name, waitedMs: Date.now() - began, remainingMs: Math.max(0, deadline - Date.now()) }, 'shutdown step still running'), progressEveryMs);
    try {
      await Promise.race([step(), timeout]);
      log.info({ step: name, tookMs: Date.now() - began }, 'shutdown step done');
    } catch (error) {
      failures.push(`${name}: ${errorMessage(error)}`);
      log.error({ step: name, tookMs: Date.now() - began, err: errorMessage(error) }, 'shutdown step failed');
    } finally {
      clearTimeout(timer);
      clearInterval(progress);
    }
  }
  return failures;
}

/** Calls `shutdown` once on the first SIGTERM or SIGINT; a second signal exits at once. */
export function onTerminationSignal(shutdown: (signal: NodeJS.Signals) => Promise<void>, log: Logger): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting without draining');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'draining');
    void shutdown(signal);
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}
