import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createPool, withTransaction, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import type { AvroCodec } from '../../../../lib/kafka/avro.ts';
import { assertFence, recordTerm } from '../../../../lib/leader/fence.ts';
import type { LeaderElector } from '../../../../lib/leader/types.ts';
import { createPostgresLease } from '../../../../lib/leader/postgres-lease.ts';
import { createLogger, type Logger } from '../../../../lib/logger.ts';
import { topicNames } from '../../../../lib/service/context.ts';
import { createLifecycleApplier, type LifecycleApplier, type TimerScheduler } from '../../../../services/provisioner/apply.ts';
import { createSimulatedDriver } from '../../../../services/provisioner/drivers/simulated.ts';
import type { AllocatorDriver } from '../../../../services/provisioner/drivers/types.ts';
import { DEFAULT_RESTART_POLICY, DEFAULT_RETRY_POLICY, type AgentSnapshot } from '../../../../services/provisioner/lifecycle.ts';
import { createPolicyDecider, loadLocalPolicyFile } from '../../../../services/provisioner/policy-client.ts';
import { reconcileOnce, type ReconcilerOptions } from '../../../../services/provisioner/reconciler.ts';
import { insertAgent, readAgent } from '../../../../services/provisioner/store.ts';
import { eventually } from '../../../support/runtime.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

jest.setTimeout(60_000);

/**
 * Two reconcilers (two provisioners) on the real Postgres, each with its own Postgres lease. The old
 * leader is paused after it decided to act (its repair blocked on a promise), a new leader takes
 * over, and then the old one resumes: its side effect must be refused, nothing done twice.
 */

// Status and audit events only go to the outbox table here (no relay): their bytes need no registry.
const codec: AvroCodec = { decode: async () => ({}), encode: async (_subject, value) => Buffer.from(JSON.stringify(value)) };
const timers: TimerScheduler = { schedule: async () => undefined, cancel: async () => undefined };

interface Gate {
  /** Resolves when something reached the gate. */
  readonly reached: Promise<void>;
  open(): void;
  wait(): Promise<void>;
}

function gate(): Gate {
  let arrive!: () => void;
  let release!: () => void;
  const reached = new Promise<void>((r) => (arrive = r));
  const opened = new Promise<void>((r) => (release = r));
  return {
    reached,
    open: () => release(),
    wait: () => {
      arrive();
      return opened;
    },
  };
}

/** The simulated driver, shared by both "processes" (they act on the same resources), counting what it was asked to do. */
function countingDriver(inner: AllocatorDriver, beforeDestroy?: () => Promise<void>) {
  const destroyed: string[] = [];
  const stopped: string[] = [];
  const driver: AllocatorDriver = {
    ...inner,
    name: inner.name,
    async destroy(agentId) {
      await beforeDestroy?.();
      destroyed.push(agentId);
      await inner.destroy(agentId);
    },
    async stop(agentId, graceMs) {
      stopped.push(agentId);
      await inner.stop(agentId, graceMs);
    },
  };
  return { driver, destroyed, stopped };
}

/** A simulated driver whose first destroy waits at `inside` until the test opens it (a leader stalled mid-repair). */
function destroyPausedOnce(logger: Logger) {
  const inside = gate();
  let pauseNext = true;
  const counted = countingDriver(createSimulatedDriver({ logger, onEvent: () => undefined }), async () => {
    if (!pauseNext) return;
    pauseNext = false;
    await inside.wait();
  });
  return { ...counted, inside };
}

describe('fencing: a paused old leader cannot act after a new leader took over', () => {
  const env = testEnv();
  const schema = uniqueName('fence').replace(/-/g, '_');
  const logger = createLogger('test', 'silent');
  const timing = { leaseDurationMs: 1_500, renewIntervalMs: 200 };
  let pool: Pool;
  const electors: LeaderElector[] = [];

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 8 });
  });

  afterEach(async () => {
    await Promise.all(electors.splice(0).map((e) => e.stop()));
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  function applierFor(driver: AllocatorDriver): LifecycleApplier {
    return createLifecycleApplier({
      pool,
      codec,
      topics: topicNames(`${schema}-`),
      logger,
      driver,
      policy: createPolicyDecider({ localPolicy: loadLocalPolicyFile(join(process.cwd(), 'policies', 'local-policy.json')) }),
      timers,
      retryPolicy: DEFAULT_RETRY_POLICY,
      restartPolicy: DEFAULT_RESTART_POLICY,
    });
  }

  /** An agent row last changed an hour ago (stuck for the reconciler). */
  async function seedAgent(patch: Partial<AgentSnapshot>): Promise<string> {
    const id = randomUUID();
    const snapshot: AgentSnapshot = { state: 'RUNNING', reason: '', restartPolicy: { mode: 'never', maxRestarts: 0 }, generation: 1, startAttempt: 1, awaitingRetry: false, restarts: 0, afterStop: null, ...patch };
    await withTransaction(pool, (client) =>
      insertAgent(client, {
        id,
        snapshot,
        spec: { template: null, image: 'registry.internal/a:1', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
        division: 'platform',
        region: null,
        labels: {},
        version: 3,
        requestId: null,
        commandId: null,
      }),
    );
    await pool.query(`UPDATE agents SET updated_at = now() - interval '1 hour' WHERE id = $1`, [id]);
    return id;
  }

  /** A leads the lease `name`; then (when asked) its lease is taken over by B, as if A had stalled past its expiry. */
  async function leaders(name: string) {
    const a = createPostgresLease({ pool, name, identity: 'a', logger, timing });
    const b = createPostgresLease({ pool, name, identity: 'b', logger, timing });
    electors.push(a, b);
    a.start();
    await eventually(() => a.state().leader, 5_000, 'a leads');
    const fenceOfA = a.fence();
    if (fenceOfA === null) throw new Error('a has no fence');
    return {
      fenceOfA,
      takeOver: async () => {
        // A stalls: no renewals (stopped without release), its lease expires, B takes it.
        await a.stop().catch(() => undefined);
        await pool.query('UPDATE leases SET expires_at = now() - interval \'1 second\' WHERE name = $1', [name]);
        b.start();
        await eventually(() => b.state().leader, 5_000, 'b leads');
        const fenceOfB = b.fence();
        if (fenceOfB === null) throw new Error('b has no fence');
        expect(fenceOfB.token).toBeGreaterThan(fenceOfA.token);
        return fenceOfB;
      },
    };
  }

  function options(applier: LifecycleApplier, driver: AllocatorDriver): ReconcilerOptions {
    return { pool, driver, applier, logger, retryPolicy: DEFAULT_RETRY_POLICY, stuckAfterMs: 1_000 };
  }

  /** The applier of the old leader, whose repairs block at `pause` after the reconciler decided (its fence in hand). */
  function pausedApplier(inner: LifecycleApplier, pause: Gate): LifecycleApplier {
    return {
      ...inner,
      apply: async (...args) => (await pause.wait(), inner.apply(...args)),
      redrive: async (...args) => (await pause.wait(), inner.redrive(...args)),
      removeOrphan: async (...args) => (await pause.wait(), inner.removeOrphan(...args)),
    };
  }

  it('refuses a stale redrive (destroy) when the old leader resumes before the new one acted; the new one destroys once', async () => {
    const { driver, destroyed } = countingDriver(createSimulatedDriver({ logger, onEvent: () => undefined }));
    const id = await seedAgent({ state: 'DESTROYING' });
    const lease = uniqueName('lease');
    const { fenceOfA, takeOver } = await leaders(lease);
    const pause = gate();
    const oldRound = reconcileOnce(options(pausedApplier(applierFor(driver), pause), driver), null, () => fenceOfA);
    await pause.reached;
    const fenceOfB = await takeOver();
    pause.open();
    const old = await oldRound;
    expect(old).toMatchObject({ deposed: true, repaired: 0 });
    expect(destroyed).toEqual([]);
    expect((await readAgent(pool, id))?.snapshot.state).toBe('DESTROYING');

    const applierB = applierFor(driver);
    const round = await reconcileOnce(options(applierB, driver), null, () => fenceOfB);
    expect(round).toMatchObject({ deposed: false, repaired: 1 });
    await applierB.idle();
    expect(destroyed).toEqual([id]);
    expect((await readAgent(pool, id))?.snapshot.state).toBe('DESTROYED');
  });

  it('does nothing when the old leader resumes after the new one acted on the same agent', async () => {
    const { driver, destroyed } = countingDriver(createSimulatedDriver({ logger, onEvent: () => undefined }));
    const id = await seedAgent({ state: 'DESTROYING' });
    const { fenceOfA, takeOver } = await leaders(uniqueName('lease'));
    const pause = gate();
    const oldRound = reconcileOnce(options(pausedApplier(applierFor(driver), pause), driver), null, () => fenceOfA);
    await pause.reached;
    const fenceOfB = await takeOver();
    const applierB = applierFor(driver);
    await reconcileOnce(options(applierB, driver), null, () => fenceOfB);
    await applierB.idle();
    expect(destroyed).toEqual([id]);
    pause.open();
    await oldRound;
    expect(destroyed).toEqual([id]);
    expect((await readAgent(pool, id))?.snapshot.state).toBe('DESTROYED');
  });

  it('refuses a stale lifecycle input (a process found gone) from the old leader', async () => {
    const { driver } = countingDriver(createSimulatedDriver({ logger, onEvent: () => undefined }));
    const id = await seedAgent({ state: 'RUNNING' });
    const { fenceOfA, takeOver } = await leaders(uniqueName('lease'));
    const pause = gate();
    const oldRound = reconcileOnce(options(pausedApplier(applierFor(driver), pause), driver), null, () => fenceOfA);
    await pause.reached;
    await takeOver();
    pause.open();
    expect(await oldRound).toMatchObject({ deposed: true, repaired: 0 });
    const after = await readAgent(pool, id);
    expect(after).toMatchObject({ version: 3, snapshot: { state: 'RUNNING' } });
  });

  it('refuses a stale orphan removal', async () => {
    const { driver, destroyed } = countingDriver(createSimulatedDriver({ logger, onEvent: () => undefined }));
    const orphan = randomUUID();
    await driver.provision({ agentId: orphan, spec: { template: null, image: 'registry.internal/a:1', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } }, division: 'platform', region: null, labels: {} });
    await driver.start({ agentId: orphan, spec: { template: null, image: 'registry.internal/a:1', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } }, division: 'platform', region: null, labels: {} }, { generation: 1, attempt: 1 });
    const { fenceOfA, takeOver } = await leaders(uniqueName('lease'));
    const pause = gate();
    const oldRound = reconcileOnce(options(pausedApplier(applierFor(driver), pause), driver), null, () => fenceOfA);
    await pause.reached;
    const fenceOfB = await takeOver();
    pause.open();
    expect(await oldRound).toMatchObject({ deposed: true, orphansRemoved: 0 });
    expect(destroyed).toEqual([]);
    const round = await reconcileOnce(options(applierFor(driver), driver), null, () => fenceOfB);
    expect(round.orphansRemoved).toBe(1);
    expect(destroyed).toEqual([orphan]);
  });

  it('a leader paused inside its side effect (fence checked, row held) makes the successor wait, and the successor does not act again', async () => {
    const { driver, destroyed, inside } = destroyPausedOnce(logger);
    const id = await seedAgent({ state: 'DESTROYING' });
    const { fenceOfA, takeOver } = await leaders(uniqueName('lease'));
    const applierA = applierFor(driver);
    const oldRound = reconcileOnce(options(applierA, driver), null, () => fenceOfA);
    await inside.reached;
    const fenceOfB = await takeOver();
    const applierB = applierFor(driver);
    const newRound = reconcileOnce(options(applierB, driver), null, () => fenceOfB);
    // B is blocked on the agent's row, held by A's redrive transaction.
    await new Promise((r) => setTimeout(r, 500));
    inside.open();
    await oldRound;
    await applierA.idle();
    await newRound;
    await applierB.idle();
    expect(destroyed).toEqual([id]);
    expect((await readAgent(pool, id))?.snapshot.state).toBe('DESTROYED');
  });

  it('a successor does not wait forever on a leader stalled inside its repair: its repair gives up on the row lock; the stalled one finishes, one destroy in all', async () => {
    const { driver, destroyed, inside } = destroyPausedOnce(logger);
    const id = await seedAgent({ state: 'DESTROYING' });
    const { fenceOfA, takeOver } = await leaders(uniqueName('lease'));
    const oldRound = reconcileOnce(options(applierFor(driver), driver), null, () => fenceOfA);
    await inside.reached;
    const fenceOfB = await takeOver();
    const startedAt = Date.now();
    const blocked = await reconcileOnce(options(applierFor(driver), driver), null, () => fenceOfB);
    // The lock timeout (5 s), not forever; nothing done.
    expect(Date.now() - startedAt).toBeLessThan(15_000);
    expect(blocked).toMatchObject({ repaired: 0, deposed: false });
    expect(destroyed).toEqual([]);
    // The stalled leader wakes up and finishes what it had begun (its fence was current when it
    // decided, and its successor could not act meanwhile): one destroy in all.
    inside.open();
    await oldRound;
    await new Promise((r) => setTimeout(r, 200));
    expect(destroyed).toEqual([id]);
    expect((await readAgent(pool, id))?.snapshot.state).toBe('DESTROYED');
  });

  it('a term won elsewhere (a Kubernetes Lease) is recorded in Postgres, tokens only grow, and the check follows it', async () => {
    const lease = uniqueName('k8s-lease');
    expect(await recordTerm(pool, { lease, token: 3 }, 'pod-a', 15_000)).toBe(true);
    await withTransaction(pool, (client) => assertFence(client, { lease, token: 3 }));
    // A late write of an older term changes nothing.
    expect(await recordTerm(pool, { lease, token: 2 }, 'pod-b', 15_000)).toBe(false);
    expect(await recordTerm(pool, { lease, token: 4 }, 'pod-b', 15_000)).toBe(true);
    await expect(withTransaction(pool, (client) => assertFence(client, { lease, token: 3 }))).rejects.toMatchObject({ code: 'STALE_FENCE', retryable: false });
    await withTransaction(pool, (client) => assertFence(client, { lease, token: 4 }));
    await expect(withTransaction(pool, (client) => assertFence(client, { lease: uniqueName('none'), token: 1 }))).rejects.toMatchObject({ code: 'STALE_FENCE' });
  });
});
