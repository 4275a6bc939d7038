import { createPool, withTransaction, type Pool, type PoolClient } from '../../lib/db/pool.ts';
import { unavailableDependency } from '../../lib/errors.ts';
import { restoreStack, startServer, stopServer } from '../support/outage.ts';
import { eventually } from '../support/runtime.ts';
import { testEnv } from '../support/stack.ts';

// Stops the shared Postgres: run this folder alone, after the rest of the suite.
jest.setTimeout(120_000);

describe('a Postgres fast shutdown (57P01) under checked-out connections', () => {
  let pool: Pool;
  const idleErrors: Error[] = [];

  beforeAll(() => {
    pool = createPool({ connectionString: testEnv().DATABASE_URL ?? '', max: 4, onIdleError: (error) => idleErrors.push(error) });
  });

  afterAll(async () => {
    await restoreStack();
    await pool?.end();
  });

  it('does not crash the process; the failed work says postgres is unavailable; the pool reconnects once it is back', async () => {
    // A connection held for long (as a lease or a handler holds one) and a transaction in progress.
    const held: PoolClient = await pool.connect();
    await held.query('SELECT 1');
    const inTransaction = withTransaction(pool, async (client) => {
      await client.query('SELECT pg_sleep(30)');
    });
    const transactionFailure = inTransaction.then(
      () => undefined,
      (error: unknown) => error,
    );
    await new Promise((r) => setTimeout(r, 300));

    // Without an 'error' listener on checked-out clients, this ended the process (jest's worker here).
    await stopServer('postgres');
    try {
      const error = await transactionFailure;
      expect(unavailableDependency(error)).toBe('postgres');
      const heldError = await held.query('SELECT 1').then(
        () => undefined,
        (failure: unknown) => failure,
      );
      expect(unavailableDependency(heldError)).toBe('postgres');
      held.release(heldError instanceof Error ? heldError : undefined);
      const down = await pool.query('SELECT 1').then(
        () => undefined,
        (failure: unknown) => failure,
      );
      expect(unavailableDependency(down)).toBe('postgres');
    } finally {
      await startServer('postgres');
    }
    await eventually(async () => (await pool.query('SELECT 1').then(() => true, () => false)), 30_000, 'the pool answers again');
    await withTransaction(pool, async (client) => {
      expect((await client.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one).toBe(1);
    });
  });
});
