import { join } from 'node:path';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createPostgresLease } from '../../../../lib/leader/postgres-lease.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { eventually } from '../../../support/runtime.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

describe('Postgres leader lease', () => {
  const env = testEnv();
  const schema = uniqueName('lease').replace(/-/g, '_');
  const logger = createLogger('test', 'silent');
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 4 });
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('elects one leader; a successor takes over on release or expiry with a larger fencing token', async () => {
    const timing = { leaseDurationMs: 1_500, renewIntervalMs: 300 };
    const a = createPostgresLease({ pool, name: 'reconciler', identity: 'a', logger, timing });
    const b = createPostgresLease({ pool, name: 'reconciler', identity: 'b', logger, timing });
    a.start();
    await eventually(() => a.state().leader, 5_000, 'a leads');
    b.start();
    await new Promise((r) => setTimeout(r, 1_000));
    expect(b.state().leader).toBe(false);
    const firstToken = a.state().fencingToken ?? 0;

    // Released on stop: b takes over at its next round, with a new token.
    await a.stop();
    await eventually(() => b.state().leader, 5_000, 'b leads after a released');
    expect(b.state().fencingToken).toBeGreaterThan(firstToken);

    // Expiry: b stops renewing (simulated by a stolen renewal window), a comes back after expiry only.
    const c = createPostgresLease({ pool, name: 'reconciler', identity: 'c', logger, timing });
    c.start();
    await new Promise((r) => setTimeout(r, 800));
    expect(c.state().leader).toBe(false);
    await pool.query(`UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = 'reconciler'`);
    await b.stop();
    await eventually(() => c.state().leader, 5_000, 'c leads after expiry');
    expect(c.state().fencingToken).toBeGreaterThan(b.state().fencingToken ?? firstToken);
    await c.stop();
  });

  it('survives its connections being terminated (57P01, as in a server restart): keeps leading in the same term', async () => {
    const appName = uniqueName('lease-app');
    const own = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2, applicationName: appName });
    const timing = { leaseDurationMs: 3_000, renewIntervalMs: 200 };
    const a = createPostgresLease({ pool: own, name: 'survivor', identity: 'a', logger, timing });
    try {
      a.start();
      await eventually(() => a.state().leader, 5_000, 'a leads');
      const token = a.fence()?.token;
      for (let i = 0; i < 5; i++) {
        await pool.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
        await new Promise((r) => setTimeout(r, 300));
      }
      // Renewals go on over new connections; the term (and its fence) is unchanged.
      await eventually(async () => (await pool.query<{ ok: boolean }>(`SELECT expires_at > now() + interval '2 seconds' AS ok FROM leases WHERE name = 'survivor'`)).rows[0]?.ok === true, 5_000, 'renewed after the cuts');
      expect(a.state().leader).toBe(true);
      expect(a.fence()?.token).toBe(token);
    } finally {
      await a.stop();
      await own.end();
    }
  });
});
