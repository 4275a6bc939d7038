import { Redis } from 'ioredis';
import { retryableError, unavailableError } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createBullmqTimers } from '../../../../services/provisioner/timers.ts';
import { eventually } from '../../../support/runtime.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

describe('BullMQ timers on the real Redis', () => {
  it('a timer due while a dependency is down waits past its attempt budget, then is delivered; close is prompt', async () => {
    const redis = new Redis(testEnv().REDIS_URL ?? '', { maxRetriesPerRequest: null });
    const prefix = uniqueName('timers');
    const outageCalls = 12; // more than the job's 10 attempts
    let calls = 0;
    let delivered = false;
    const timers = createBullmqTimers({
      connection: redis,
      prefix,
      logger: createLogger('timers-test', 'silent'),
      unavailableDelayMs: 50,
      closeWaitMs: 2_000,
      onDue: async () => {
        calls++;
        if (calls <= outageCalls) throw retryableError('DATABASE_UNAVAILABLE', 'Postgres failed', unavailableError('postgres', 'PG_DOWN', 'connection refused'));
        delivered = true;
      },
    });
    try {
      timers.start();
      await timers.schedule('00000000-0000-4000-8000-000000000001', 'retry', { generation: 1, attempt: 1 }, 0);
      await eventually(() => delivered, 30_000, 'the timer delivered once the dependency is back');
      expect(calls).toBe(outageCalls + 1);
    } finally {
      const started = Date.now();
      await timers.close();
      // Not a speed goal: only that close does not hang (a clean close is immediate; a stuck one is cut
      // after closeWaitMs, twice at most).
      expect(Date.now() - started).toBeLessThan(15_000);
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length > 0) await redis.del(...keys);
      await redis.quit();
    }
  });
});
