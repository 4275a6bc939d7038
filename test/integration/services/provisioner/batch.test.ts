import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { AgentCommand, AgentSpec } from '../../../../lib/contracts/types.ts';
import { createPool, withTransaction, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import type { AvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { topicNames } from '../../../../lib/service/context.ts';
import { createLifecycleApplier, type BatchInput, type LifecycleApplier, type TimerScheduler } from '../../../../services/provisioner/apply.ts';
import { createSimulatedDriver } from '../../../../services/provisioner/drivers/simulated.ts';
import type { AllocatorDriver } from '../../../../services/provisioner/drivers/types.ts';
import { commandInput } from '../../../../services/provisioner/handler.ts';
import { DEFAULT_RESTART_POLICY, DEFAULT_RETRY_POLICY, type AgentSnapshot } from '../../../../services/provisioner/lifecycle.ts';
import { createPolicyDecider, loadLocalPolicyFile } from '../../../../services/provisioner/policy-client.ts';
import { insertAgent } from '../../../../services/provisioner/store.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

jest.setTimeout(60_000);

/**
 * The batch path (`applyBatch`, what the provisioner does with a Kafka batch) against the reference
 * (`apply`, one input at a time in the same order), on two schemas of the real Postgres seeded alike:
 * the per-input results, the rows, the outbox events per agent, and the driver's and the timers'
 * calls per agent must be the same.
 */

// Events only go to the outbox table (no relay): JSON bytes, readable back.
const codec: AvroCodec = { decode: async () => ({}), encode: async (_subject, value) => Buffer.from(JSON.stringify(value)) };
const logger = createLogger('test', 'silent');

function spec(gpuCount = 0): AgentSpec {
  return { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount, gpuType: gpuCount > 0 ? 'a100' : null } };
}

function command(agentId: string, type: AgentCommand['command'], options: { commandId?: string; spec?: AgentSpec | null } = {}): AgentCommand {
  return {
    commandId: options.commandId ?? randomUUID(),
    agentId,
    command: type,
    requestId: randomUUID(),
    spec: options.spec === undefined ? (type === 'INSTANTIATE' ? spec() : null) : options.spec,
    division: 'platform',
    region: null,
    labels: {},
    issuedBy: 'kernel',
    issuedAt: new Date(),
    reason: null,
    attempt: 1,
  };
}

const fromCommand = (c: AgentCommand): BatchInput => ({ agentId: c.agentId, input: commandInput(c), origin: { actor: c.issuedBy, command: c } });

/** What the driver and the timers were asked to do, per agent, in order. */
function recorder() {
  const calls = new Map<string, string[]>();
  const note = (agentId: string, call: string): void => void calls.set(agentId, [...(calls.get(agentId) ?? []), call]);
  const timers: TimerScheduler = {
    schedule: async (agentId, kind, fence, delayMs) => note(agentId, `schedule ${kind} ${fence.generation}/${fence.attempt} ${delayMs}`),
    cancel: async (agentId, fence) => note(agentId, `cancel ${fence.generation}/${fence.attempt}`),
  };
  // Driver reports are dropped: they would race the inputs under test (their own path is the same).
  const inner = createSimulatedDriver({ logger, onEvent: () => undefined, startDelayMs: 600_000 });
  const driver: AllocatorDriver = {
    ...inner,
    name: inner.name,
    provision: async (workload) => (note(workload.agentId, 'provision'), inner.provision(workload)),
    start: async (workload, fence) => (note(workload.agentId, `start ${fence.generation}/${fence.attempt}`), inner.start(workload, fence)),
    stop: async (agentId, graceMs) => (note(agentId, 'stop'), inner.stop(agentId, graceMs)),
    destroy: async (agentId) => (note(agentId, 'destroy'), inner.destroy(agentId)),
  };
  return { calls, timers, driver, close: () => inner.close() };
}

describe('a batch of inputs gives the same per-agent results as applying them one by one', () => {
  const env = testEnv();
  const base = uniqueName('batch').replace(/-/g, '_');
  const schemas = { single: `${base}_one`, batch: `${base}_all` };
  const pools: Record<keyof typeof schemas, Pool | undefined> = { single: undefined, batch: undefined };
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    for (const key of ['single', 'batch'] as const) {
      await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema: schemas[key], logger });
      pools[key] = createPool({ connectionString: env.DATABASE_URL ?? '', schema: schemas[key], max: 6 });
    }
  });

  afterAll(async () => {
    for (const close of closers) await close();
    for (const key of ['single', 'batch'] as const) {
      const pool = pools[key];
      if (!pool) continue;
      await pool.query(`DROP SCHEMA IF EXISTS ${schemas[key]} CASCADE`);
      await pool.end();
    }
  });

  function applierOn(pool: Pool) {
    const record = recorder();
    closers.push(async () => record.close());
    const applier: LifecycleApplier = createLifecycleApplier({
      pool,
      codec,
      topics: topicNames(`${base}-`),
      logger,
      driver: record.driver,
      policy: createPolicyDecider({ localPolicy: loadLocalPolicyFile(join(process.cwd(), 'policies', 'local-policy.json')) }),
      timers: record.timers,
      retryPolicy: DEFAULT_RETRY_POLICY,
      restartPolicy: DEFAULT_RESTART_POLICY,
    });
    return { applier, calls: record.calls };
  }

  async function seed(pool: Pool, id: string, snapshot: Partial<AgentSnapshot>, appliedCommandId: string): Promise<void> {
    const full: AgentSnapshot = { state: 'RUNNING', reason: 'up', restartPolicy: DEFAULT_RESTART_POLICY, generation: 1, startAttempt: 1, awaitingRetry: false, restarts: 0, afterStop: null, instanceId: 'host:1', ...snapshot };
    await withTransaction(pool, async (client) => {
      await insertAgent(client, { id, snapshot: full, spec: spec(), division: 'platform', region: null, labels: {}, version: 3, requestId: null, commandId: null });
      await client.query('INSERT INTO applied_commands (command_id, agent_id) VALUES ($1, $2)', [appliedCommandId, id]);
    });
  }

  /** The rows, the outbox events per agent (without their random ids and times) and the applied commands. */
  async function stored(pool: Pool) {
    const agents = (await pool.query<{ id: string; state: string }>('SELECT id, state, reason, lifecycle, version::int AS version, division, last_request_id, last_command_id FROM agents ORDER BY id')).rows;
    const events = new Map<string, unknown[]>();
    for (const row of (await pool.query<{ topic: string; key: string; value: Buffer }>('SELECT topic, key, value FROM outbox ORDER BY id')).rows) {
      const { eventId: _eventId, time: _time, hash: _hash, traceId: _traceId, ...value } = JSON.parse(row.value.toString()) as Record<string, unknown>;
      events.set(row.key, [...(events.get(row.key) ?? []), { topic: row.topic, ...value }]);
    }
    const applied = (await pool.query('SELECT command_id, agent_id FROM applied_commands ORDER BY command_id')).rows;
    return { agents, events: Object.fromEntries([...events.entries()].sort(([a], [b]) => a.localeCompare(b))), applied };
  }

  it('valid, duplicate (in the batch and from before), conflicting, stale and quota-bound inputs for the same and different agents', async () => {
    const fresh = randomUUID(); // created, then stopped, started again (refused while stopping) and destroyed
    const running = randomUUID(); // seeded RUNNING (version 3)
    const unknown = randomUUID(); // never created
    const noSpec = randomUUID(); // INSTANTIATE without a spec
    const gpuA = randomUUID(); // 3 of the division's 4 GPUs
    const gpuB = randomUUID(); // 2 more: over the quota once gpuA holds 3
    const appliedBefore = randomUUID();
    const instantiate = command(fresh, 'INSTANTIATE');
    const inputs: BatchInput[] = [
      fromCommand(instantiate),
      fromCommand(command(gpuA, 'INSTANTIATE', { spec: spec(3) })),
      fromCommand(command(running, 'START')), // already running: a noop
      fromCommand(instantiate), // the same command again in the batch: a duplicate
      fromCommand(command(running, 'STOP', { commandId: appliedBefore })), // applied before the batch: a duplicate
      fromCommand(command(gpuB, 'INSTANTIATE', { spec: spec(2) })),
      fromCommand(command(unknown, 'STOP')), // unknown agent: rejected
      { agentId: running, input: { type: 'PROCESS_EXITED', generation: 0, attempt: 1, exitCode: 1, signal: null }, origin: { actor: 'provisioner/driver' } }, // stale fence
      { agentId: fresh, input: { type: 'STARTED', generation: 0, attempt: 1, instanceId: 'old:1' }, origin: { actor: 'provisioner/driver' } }, // stale fence
      { agentId: fresh, input: { type: 'STARTED', generation: 1, attempt: 1, instanceId: 'host:2' }, origin: { actor: 'provisioner/driver' } }, // valid
      fromCommand(command(fresh, 'STOP')),
      fromCommand(command(noSpec, 'INSTANTIATE', { spec: null })),
      fromCommand(command(fresh, 'START')), // while stopping: refused or queued, as the lifecycle says
      fromCommand(command(running, 'HEARTBEAT_MISSED')),
      fromCommand(command(running, 'RESTART')),
      fromCommand(command(fresh, 'DESTROY')),
      fromCommand(command(gpuA, 'INSTANTIATE', { spec: spec(3) })), // a second INSTANTIATE: conflicting
      fromCommand(command(running, 'STOP')),
    ];

    const single = applierOn(pools.single as Pool);
    const batch = applierOn(pools.batch as Pool);
    await seed(pools.single as Pool, running, {}, appliedBefore);
    await seed(pools.batch as Pool, running, {}, appliedBefore);

    const one: unknown[] = [];
    for (const item of inputs) one.push(await single.applier.apply(item.agentId, item.input, item.origin));
    const all = await batch.applier.applyBatch(inputs);
    await Promise.all([single.applier.idle(), batch.applier.idle()]);

    expect(all.map((r) => (r.ok ? r.outcomes : r))).toEqual(one);
    // The mix did exercise each case.
    const results = all.flatMap((r) => (r.ok ? [r.outcomes[0]?.result] : []));
    expect(results.filter((r) => r !== undefined && 'duplicate' in r)).toHaveLength(2);
    expect(results.filter((r) => r !== undefined && !r.ok).map((r) => (r !== undefined && !r.ok ? r.rejection.code : ''))).toEqual(
      expect.arrayContaining(['UNKNOWN_AGENT', 'STALE_EVENT', 'INVALID_INPUT']),
    );
    const [a, b] = [await stored(pools.single as Pool), await stored(pools.batch as Pool)];
    expect(b).toEqual(a);
    expect(a.agents.find((row) => row.id === gpuB)?.state).toBe('REJECTED');
    expect(Object.fromEntries(batch.calls)).toEqual(Object.fromEntries(single.calls));
  });

  it('a batch of new agents: each created once, its effects run after the commit', async () => {
    const pool = pools.batch as Pool;
    const { applier, calls } = applierOn(pool);
    const commands = Array.from({ length: 50 }, () => command(randomUUID(), 'INSTANTIATE'));
    const results = await applier.applyBatch(commands.map(fromCommand));
    expect(results.every((r) => r.ok && r.outcomes[0]?.result.ok === true)).toBe(true);
    const states = await pool.query<{ state: string }>('SELECT state FROM agents WHERE id = ANY($1::uuid[])', [commands.map((c) => c.agentId)]);
    expect(states.rows.map((r) => r.state)).toEqual(commands.map(() => 'STARTING'));
    for (const c of commands) expect(calls.get(c.agentId)).toEqual(['provision', 'start 1/1', `schedule start-timeout 1/1 ${DEFAULT_RETRY_POLICY.startTimeoutMs}`]);
    const outbox = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE key = ANY($1::text[])', [commands.map((c) => c.agentId)]);
    // PENDING, PROVISIONING, STARTING: a status and an audit event each.
    expect(outbox.rows[0]?.n).toBe(commands.length * 6);
  });
});
