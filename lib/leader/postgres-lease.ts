import type { Pool } from '../db/pool.ts';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { DEFAULT_LEASE_TIMING, type LeaderElector, type LeadershipState, type LeaseTiming } from './types.ts';

export interface PostgresLeaseOptions {
  readonly pool: Pool;
  /** The lease's name, one per singleton (e.g. `provisioner-reconciler`). */
  readonly name: string;
  readonly identity: string;
  readonly logger: Logger;
  readonly timing?: Partial<LeaseTiming>;
}

// Take the lease when free or expired, or renew it when ours; a change of holder bumps the token.
const ACQUIRE_OR_RENEW = `
INSERT INTO leases (name, holder, fencing_token, acquired_at, expires_at)
VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3 / 1000.0))
ON CONFLICT (name) DO UPDATE SET
  holder = EXCLUDED.holder,
  fencing_token = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.fencing_token ELSE leases.fencing_token + 1 END,
  acquired_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.acquired_at ELSE now() END,
  expires_at = EXCLUDED.expires_at
WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
RETURNING fencing_token`;

/**
 * Leader election on a Postgres row: the default outside Kubernetes. Time is the database's
 * (`now()`), so the members' clocks do not matter. A leader that cannot renew steps down once its
 * lease would have expired, before anyone else can take it.
 */
export function createPostgresLease(options: PostgresLeaseOptions): LeaderElector {
  const timing = { ...DEFAULT_LEASE_TIMING, ...options.timing };
  const log = options.logger.child({ component: 'leader', lease: options.name });
  const listeners: ((state: LeadershipState) => void)[] = [];
  let current: LeadershipState = { leader: false, fencingToken: null };
  let timer: NodeJS.Timeout | undefined;
  let lastRenewedAt = 0;
  let running = false;
  let round: Promise<void> = Promise.resolve();

  function set(next: LeadershipState) {
    if (next.leader === current.leader && next.fencingToken === current.fencingToken) return;
    current = next;
    log.info({ leader: next.leader, fencingToken: next.fencingToken, identity: options.identity }, next.leader ? 'became leader' : 'not leader');
    for (const listener of listeners) listener(next);
  }

  async function tryAcquire() {
    const startedAt = Date.now();
    try {
      const { rows } = await options.pool.query<{ fencing_token: string }>(ACQUIRE_OR_RENEW, [options.name, options.identity, timing.leaseDurationMs]);
      const row = rows[0];
      if (row) {
        lastRenewedAt = startedAt;
        set({ leader: true, fencingToken: Number(row.fencing_token) });
      } else {
        set({ leader: false, fencingToken: null });
      }
    } catch (error) {
      log.warn({ err: errorMessage(error) }, 'lease round failed');
      if (current.leader && Date.now() - lastRenewedAt >= timing.leaseDurationMs) set({ leader: false, fencingToken: null });
    }
  }

  // Leadership ends on its own before the lease could expire, even while a renewal hangs: no
  // rival can take the lease while this one still believes it leads.
  function state(): LeadershipState {
    return current.leader && Date.now() - lastRenewedAt >= timing.leaseDurationMs - timing.renewIntervalMs ? { leader: false, fencingToken: null } : current;
  }

  function schedule() {
    if (!running) return;
    timer = setTimeout(() => {
      round = tryAcquire().finally(schedule);
    }, timing.renewIntervalMs);
    timer.unref();
  }

  return {
    identity: options.identity,
    start() {
      if (running) return;
      running = true;
      round = tryAcquire().finally(schedule);
    },
    async stop() {
      running = false;
      clearTimeout(timer);
      await round;
      if (current.leader) {
        await options.pool
          .query('UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2', [options.name, options.identity])
          .catch((error: unknown) => log.warn({ err: errorMessage(error) }, 'lease not released; it expires on its own'));
      }
      set({ leader: false, fencingToken: null });
    },
    state,
    fence() {
      const { leader, fencingToken } = state();
      return leader && fencingToken !== null ? { lease: options.name, token: fencingToken } : null;
    },
    onChange(listener) {
      listeners.push(listener);
    },
  };
}
