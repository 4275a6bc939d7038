/**
 * Scheduled key rotation: the latest key version is replaced once it is older than the interval
 * (AUDIT_KEY_ROTATION_INTERVAL, default 30 days), judged by its creation time (Transit gives one per
 * version; a local keyring its file's time). Failures are counted
 * (`agent_manager_key_rotation_failures_total`, alerted on by the chart) and retried at the next check.
 */
import { errorCode, errorMessage } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { Signer } from './signer.ts';

export interface KeyRotationScheduleOptions {
  readonly signer: Signer;
  /** Rotate when the latest version is at least this old; 0 turns the schedule off. */
  readonly intervalMs: number;
  readonly metrics: Pick<Metrics, 'keyRotationFailures' | 'signingKeyLastRotation'>;
  readonly logger: Logger;
  /** Time between checks. Default: a 24th of the interval, between 10 s and 1 hour. */
  readonly checkEveryMs?: number;
  /**
   * Checked before each check: false skips it (not the leader, safe mode on). Several processes
   * rotating at once would each add a version, so run the schedule on one (e.g. the leader).
   */
  readonly enabled?: () => boolean;
  /** Test seam. */
  readonly now?: () => number;
}

export type KeyRotationCheck =
  | { readonly outcome: 'skipped' }
  | { readonly outcome: 'fresh'; readonly version: number; readonly ageMs: number }
  | { readonly outcome: 'unknown-age'; readonly version: number }
  | { readonly outcome: 'rotated'; readonly from: number; readonly version: number }
  | { readonly outcome: 'failed'; readonly code: string };

export interface KeyRotationSchedule {
  /** Runs one check now (also what the timer runs). Never throws: a failure is counted and logged. */
  check(): Promise<KeyRotationCheck>;
  stop(): void;
}

export function startKeyRotationSchedule(options: KeyRotationScheduleOptions): KeyRotationSchedule {
  const { signer, intervalMs, metrics, logger } = options;
  const now = options.now ?? Date.now;
  const checkEveryMs = options.checkEveryMs ?? Math.min(Math.max(Math.floor(intervalMs / 24), 10_000), 3_600_000);
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let running: Promise<KeyRotationCheck> | undefined;

  async function checkOnce(): Promise<KeyRotationCheck> {
    if (intervalMs <= 0 || (options.enabled !== undefined && !options.enabled())) return { outcome: 'skipped' };
    let stage = 'reading the key versions';
    try {
      const versions = await signer.publicKeys();
      const latest = versions.at(-1);
      const createdAt = latest?.createdAt === undefined ? Number.NaN : Date.parse(latest.createdAt);
      if (latest !== undefined && Number.isNaN(createdAt)) return { outcome: 'unknown-age', version: latest.version };
      if (latest !== undefined) {
        metrics.signingKeyLastRotation.set(createdAt / 1000);
        const ageMs = now() - createdAt;
        if (ageMs < intervalMs) return { outcome: 'fresh', version: latest.version, ageMs };
      }
      stage = 'rotating';
      const version = await signer.rotate();
      metrics.signingKeyLastRotation.set(now() / 1000);
      logger.info({ keyId: signer.keyId, signer: signer.kind, from: latest?.version ?? 0, version }, 'signing key rotated (scheduled)');
      return { outcome: 'rotated', from: latest?.version ?? 0, version };
    } catch (error) {
      metrics.keyRotationFailures.inc();
      const code = errorCode(error);
      logger.warn({ keyId: signer.keyId, signer: signer.kind, code, err: errorMessage(error) }, `signing key rotation failed ${stage}; retrying at the next check`);
      return { outcome: 'failed', code };
    }
  }

  function check(): Promise<KeyRotationCheck> {
    // One check at a time: a slow Vault must not stack them up.
    running ??= checkOnce().finally(() => {
      running = undefined;
    });
    return running;
  }

  const loop = async () => {
    await check();
    if (!stopped) {
      timer = setTimeout(() => void loop(), checkEveryMs);
      timer.unref();
    }
  };
  if (intervalMs > 0) void loop();

  return {
    check,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
