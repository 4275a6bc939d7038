/**
 * Revoked signing key versions (`audit_signing_revocations`): a version declared compromised stays
 * listed for good. `audit verify` reports what such a version signed; `audit resign` counter-signs it.
 */
import { buildAuditEvent } from '../audit.ts';
import { withTransaction, type Pool } from '../db/pool.ts';
import { retryableError } from '../errors.ts';
import type { AvroCodec } from '../kafka/avro.ts';
import { enqueueEvents } from '../outbox/outbox.ts';

export interface Revocation {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly revokedAt: Date;
  readonly revokedBy: string;
  readonly reason: string;
}

interface RevocationRow {
  key_id: string;
  key_version: number;
  revoked_at: Date;
  revoked_by: string;
  reason: string;
}

const revocationOf = (row: RevocationRow): Revocation => ({ keyId: row.key_id, keyVersion: row.key_version, revokedAt: row.revoked_at, revokedBy: row.revoked_by, reason: row.reason });

/** Every revocation (of `keyId` only when given), by key id then version. */
export async function listRevocations(db: Pick<Pool, 'query'>, keyId?: string): Promise<Revocation[]> {
  const { rows } = await db.query<RevocationRow>(
    `SELECT key_id, key_version, revoked_at, revoked_by, reason FROM audit_signing_revocations
     WHERE $1::text IS NULL OR key_id = $1 ORDER BY key_id, key_version`,
    [keyId ?? null],
  );
  return rows.map(revocationOf);
}

export interface RevokeKeyVersionOptions {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly reason: string;
  /** Who (recorded in the row and the audit event). */
  readonly actor: string;
  readonly codec: AvroCodec;
  /** The audit topic (prefix-aware). */
  readonly auditTopic: string;
}

/**
 * Records the revocation and its audit event (`signing_key.revoked`) in one transaction. Revoking a
 * version already revoked changes nothing (the first reason stands, no second event):
 * `created` says which happened.
 */
export async function revokeKeyVersion(pool: Pool, options: RevokeKeyVersionOptions): Promise<{ readonly revocation: Revocation; readonly created: boolean }> {
  return withTransaction(pool, async (client) => {
    const inserted = await client.query<RevocationRow>(
      `INSERT INTO audit_signing_revocations (key_id, key_version, revoked_by, reason) VALUES ($1, $2, $3, $4)
       ON CONFLICT (key_id, key_version) DO NOTHING
       RETURNING key_id, key_version, revoked_at, revoked_by, reason`,
      [options.keyId, options.keyVersion, options.actor, options.reason],
    );
    const row = inserted.rows[0];
    if (row === undefined) {
      const { rows } = await client.query<RevocationRow>(
        'SELECT key_id, key_version, revoked_at, revoked_by, reason FROM audit_signing_revocations WHERE key_id = $1 AND key_version = $2',
        [options.keyId, options.keyVersion],
      );
      const existing = rows[0];
      // Only a concurrent delete (never done by the services) gets here.
      if (existing === undefined) throw retryableError('DATABASE_CONFLICT', `the revocation of ${options.keyId} v${options.keyVersion} changed while being recorded; retry`);
      return { revocation: revocationOf(existing), created: false };
    }
    const audit = buildAuditEvent({
      actor: options.actor,
      action: 'signing_key.revoked',
      agentId: null,
      requestId: null,
      traceId: null,
      payload: { keyId: options.keyId, keyVersion: options.keyVersion, reason: options.reason },
    });
    await enqueueEvents(client, options.codec, [{ topic: options.auditTopic, key: `signing-key:${options.keyId}`, value: audit, eventId: audit.eventId }]);
    return { revocation: revocationOf(row), created: true };
  });
}
