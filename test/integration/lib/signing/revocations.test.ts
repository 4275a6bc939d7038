import { join } from 'node:path';
import { avroTypeOptions } from '../../../../lib/contracts/schemas.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createAvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { listRevocations, revokeKeyVersion } from '../../../../lib/signing/revocations.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { registerUnprefixedSchemas } from '../../../support/schemas.ts';

describe('signing key revocations (Postgres, audited through the outbox)', () => {
  const env = testEnv();
  const schema = uniqueName('revocations').replace(/-/g, '_');
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() });
  let pool: Pool;

  beforeAll(async () => {
    await registerUnprefixedSchemas(['audit-events']);
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
  });
  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('records a revocation once, with its audit event in the same transaction; lists them per key', async () => {
    expect(await listRevocations(pool)).toEqual([]);
    // The audit topic's schema is the registry's `audit-events-value`: encode against it.
    const options = { keyId: 'agent-manager-audit', keyVersion: 2, reason: 'key material seen in a CI log', actor: 'alice', codec, auditTopic: 'audit-events' };
    const first = await revokeKeyVersion(pool, options);
    expect(first.created).toBe(true);
    expect(first.revocation).toMatchObject({ keyId: 'agent-manager-audit', keyVersion: 2, revokedBy: 'alice', reason: 'key material seen in a CI log' });

    const again = await revokeKeyVersion(pool, { ...options, reason: 'a second reason', actor: 'bob' });
    expect(again.created).toBe(false);
    expect(again.revocation).toMatchObject({ revokedBy: 'alice', reason: 'key material seen in a CI log' });
    await revokeKeyVersion(pool, { ...options, keyId: 'other-key', keyVersion: 1 });

    expect((await listRevocations(pool)).map((r) => `${r.keyId}/${r.keyVersion}`)).toEqual(['agent-manager-audit/2', 'other-key/1']);
    expect((await listRevocations(pool, 'agent-manager-audit')).map((r) => r.keyVersion)).toEqual([2]);

    // One audit event per new revocation (none for the repeat), waiting in the outbox.
    const { rows } = await pool.query<{ value: Buffer; key: string }>(`SELECT value, key FROM outbox WHERE topic = 'audit-events' ORDER BY id`);
    expect(rows.map((r) => r.key)).toEqual(['signing-key:agent-manager-audit', 'signing-key:other-key']);
    const event = (await codec.decode(rows[0]?.value ?? Buffer.alloc(0))) as { action: string; actor: string; payload: string };
    expect(event.action).toBe('signing_key.revoked');
    expect(event.actor).toBe('alice');
    expect(JSON.parse(event.payload)).toEqual({ keyId: 'agent-manager-audit', keyVersion: 2, reason: 'key material seen in a CI log' });
  });
});
