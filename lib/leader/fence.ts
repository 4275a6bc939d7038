import type { Pool, PoolClient } from '../db/pool.ts';
import { isAppError, permanentError } from '../errors.ts';

/**
 * A leader's authority for one term: the lease's name in the `leases` table and the fencing token
 * of the term. Side effects carry it and check it where they happen, so a leader that stalled
 * (GC, CPU starvation, SIGSTOP) after deciding to act cannot act once a successor's term began.
 */
export interface LeaderFence {
  readonly lease: string;
  readonly token: number;
}

export const STALE_FENCE = 'STALE_FENCE';

export function isStaleFence(error: unknown): boolean {
  return isAppError(error) && error.code === STALE_FENCE;
}

/**
 * Throws STALE_FENCE unless `fence` is still the lease's current term. Call it inside the
 * transaction that decides the side effect, AFTER locking the rows the effect is about: under READ
 * COMMITTED the check then sees any takeover committed before the lock was granted, and a successor
 * deciding about the same rows waits for this transaction.
 */
export async function assertFence(client: PoolClient, fence: LeaderFence): Promise<void> {
  const { rows } = await client.query<{ fencing_token: string }>('SELECT fencing_token FROM leases WHERE name = $1', [fence.lease]);
  const current = rows[0] === undefined ? null : Number(rows[0].fencing_token);
  if (current !== fence.token) {
    throw permanentError(STALE_FENCE, `lease ${fence.lease}: fencing token ${fence.token} is stale (current: ${current ?? 'none'})`, undefined, {
      lease: fence.lease,
      token: fence.token,
      current,
    });
  }
}

/**
 * Records a term won elsewhere (a Kubernetes Lease) in `leases`, so `assertFence` works the same
 * for every elector. Tokens only grow: a late write of an older term changes nothing and answers
 * false. `expires_at` is informational here; the elector owns expiry.
 */
export async function recordTerm(db: Pool | PoolClient, fence: LeaderFence, holder: string, leaseDurationMs: number): Promise<boolean> {
  const { rows } = await db.query<{ fencing_token: string }>(
    `INSERT INTO leases (name, holder, fencing_token, acquired_at, expires_at)
     VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4 / 1000.0))
     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, fencing_token = EXCLUDED.fencing_token,
       acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
     WHERE leases.fencing_token <= EXCLUDED.fencing_token
     RETURNING fencing_token`,
    [fence.lease, holder, fence.token, leaseDurationMs],
  );
  return rows.length === 1;
}
