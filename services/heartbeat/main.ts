/**
 * The heartbeat service: detects hung and lost agents from `agent-heartbeats`, with no false alarm
 * when the service itself is behind.
 *
 * - One consumer group reads `agent-heartbeats` and `agent-status` with the co-partitioned assigner:
 *   partition p of both topics belongs to one member, so the member that keeps an agent's deadline
 *   also sees its intended stops (both topics are keyed by agentId with the same partition count).
 * - Per Kafka batch, one Lua script in Redis: heartbeats push tracked agents' deadlines to
 *   `now + max(HEARTBEAT_MISS_FACTOR × interval, HEARTBEAT_MIN_TTL_MS)` and store the last heartbeat;
 *   statuses start tracking (RUNNING, which names the current instance when the provisioner knows it:
 *   heartbeats of any other instance are then ignored) or end it (STARTING, STOPPING, STOPPED,
 *   DESTROYING, DESTROYED, FAILED). An instance's last heartbeat, marked `stopping` by the SDK when it
 *   shuts down on purpose, ends it too: the provisioner's STOPPING comes later, through its outbox.
 * - A sweeper per owned partition lapses deadlines only once the partition is caught up: both topics'
 *   partitions handled up to their log ends read (ListOffsets) after the deadline, so a paused,
 *   lagging or restarting monitor never declares a miss from its own delay; a partition just assigned
 *   waits HEARTBEAT_FAILOVER_GRACE_MS first. A lapse queues HEARTBEAT_MISSED then RECOVER in Redis,
 *   atomically; a dispatcher produces them to `agent-commands` (ids derived from the lapse) and drops
 *   them once acknowledged. HEARTBEAT_RESUMED follows when the agent heartbeats again.
 * - The mass-failure guard holds every RECOVER while more than HEARTBEAT_MASS_FAILURE_RATIO of the
 *   tracked agents lapsed within the window (metric, alert log, audit event); recovers are released at
 *   HEARTBEAT_RECOVER_RATE per second (burst HEARTBEAT_RECOVER_BURST) once it clears.
 */
import { z } from 'zod';
import { buildAuditEvent } from '../../lib/audit.ts';
import { configFields, loadConfig, type Env } from '../../lib/config.ts';
import type { AgentCommand, AgentHeartbeat, AgentStatus } from '../../lib/contracts/types.ts';
import { errorMessage, permanentError } from '../../lib/errors.ts';
import { encodeLastHeartbeat, heartbeatKeyPrefix } from '../../lib/heartbeat/last-heartbeat.ts';
import { createBatchWorker, type BatchWorker, type DecodedBatch } from '../../lib/runtime/batch-worker.ts';
import type { ServiceContext } from '../../lib/service/context.ts';
import { caughtUp, commandIdOf, MassFailureGuard, RateLimiter, trackingActionOf, type DeadlineSettings, type GuardChange } from './logic.ts';
import { createHeartbeatStore, type PendingCommand, type StatusUpdate } from './store.ts';

const ratio = z.coerce.number('expected a number').gt(0, 'expected more than 0').max(1, 'expected at most 1');

/** Heartbeat service settings (environment variables), validated at start-up. */
export const heartbeatConfigShape = {
  /** Missed = no heartbeat for max(HEARTBEAT_MISS_FACTOR × the agent's interval, HEARTBEAT_MIN_TTL_MS). */
  HEARTBEAT_MISS_FACTOR: z.coerce.number('expected a number').min(1, 'expected 1 or more').default(3),
  HEARTBEAT_MIN_TTL_MS: configFields.positiveInt(5_000),
  /** The interval assumed for agents whose heartbeats do not announce one (older SDKs). */
  HEARTBEAT_DEFAULT_INTERVAL_MS: configFields.positiveInt(2_000),
  HEARTBEAT_SWEEP_INTERVAL_MS: configFields.positiveInt(250),
  /** Deadlines found on a partition just assigned (failover, restart) count only after this long. */
  HEARTBEAT_FAILOVER_GRACE_MS: configFields.nonNegativeInt(10_000),
  HEARTBEAT_MASS_FAILURE_RATIO: ratio.default(0.5),
  HEARTBEAT_MASS_FAILURE_WINDOW_MS: configFields.positiveInt(30_000),
  /** Fewer tracked agents than this never trip the guard. */
  HEARTBEAT_MASS_FAILURE_MIN_AGENTS: configFields.positiveInt(10),
  /** A RECOVER waits this long after the missed deadline, so a mass failure is seen before recovers go out. */
  HEARTBEAT_RECOVER_HOLD_MS: configFields.nonNegativeInt(5_000),
  HEARTBEAT_RECOVER_RATE: z.coerce.number('expected a number').positive('expected a positive number of recovers per second').default(5),
  HEARTBEAT_RECOVER_BURST: configFields.positiveInt(20),
  HEARTBEAT_CONCURRENCY: configFields.positiveInt(4),
  /** Kafka group session: how soon the partitions of a dead heartbeat process move. */
  HEARTBEAT_SESSION_TIMEOUT_MS: configFields.positiveInt(10_000),
};

export type HeartbeatConfig = z.infer<z.ZodObject<typeof heartbeatConfigShape>>;

export function loadHeartbeatConfig(env: Env): HeartbeatConfig {
  return loadConfig(heartbeatConfigShape, env);
}

export interface HeartbeatOptions {
  /** Consumer group; default `<prefix>agent-manager-heartbeat`. */
  readonly groupId?: string;
}

export interface RunningHeartbeat {
  readonly keyPrefix: string;
  readonly worker: BatchWorker;
  /** True while the mass-failure guard holds recovers. */
  massFailure(): boolean;
  /** Partitions owned (of both topics). */
  owned(): readonly number[];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DAY_MS = 86_400_000;
const SWEEP_LIMIT = 1_000;
const DISPATCH_LIMIT = 500;
const GUARD_EVERY_MS = 1_000;

/** What the Avro schema cannot say about a heartbeat; a record that fails goes to the DLQ. */
export function validateHeartbeat(value: unknown): AgentHeartbeat {
  const hb = value as AgentHeartbeat;
  if (typeof hb !== 'object' || hb === null) throw permanentError('VALIDATION_FAILED', 'a heartbeat must be a record');
  if (typeof hb.agentId !== 'string' || !UUID.test(hb.agentId)) throw permanentError('VALIDATION_FAILED', `agentId ${JSON.stringify(hb.agentId)} is not a UUID`);
  if (typeof hb.instanceId !== 'string' || hb.instanceId === '') throw permanentError('VALIDATION_FAILED', 'instanceId is empty');
  if (!Number.isInteger(hb.sequence) || hb.sequence < 0) throw permanentError('VALIDATION_FAILED', `sequence ${String(hb.sequence)} is not a non-negative integer`);
  if (!(hb.sentAt instanceof Date) || Number.isNaN(hb.sentAt.getTime())) throw permanentError('VALIDATION_FAILED', 'sentAt is not a time');
  if (hb.intervalMs !== null && hb.intervalMs !== undefined && !(Number.isInteger(hb.intervalMs) && hb.intervalMs > 0 && hb.intervalMs <= DAY_MS)) {
    throw permanentError('VALIDATION_FAILED', `intervalMs ${String(hb.intervalMs)} is not between 1 ms and one day`);
  }
  return hb;
}

export function validateStatus(value: unknown): AgentStatus {
  const status = value as AgentStatus;
  if (typeof status !== 'object' || status === null) throw permanentError('VALIDATION_FAILED', 'a status must be a record');
  if (typeof status.agentId !== 'string' || !UUID.test(status.agentId)) throw permanentError('VALIDATION_FAILED', `agentId ${JSON.stringify(status.agentId)} is not a UUID`);
  return status;
}

const COMMAND_OF = { missed: 'HEARTBEAT_MISSED', recover: 'RECOVER', resumed: 'HEARTBEAT_RESUMED' } as const;

interface Owned {
  readonly since: number;
  /** Log ends read after a due deadline, until the partition is handled up to them. */
  waiting: EndSnapshot | undefined;
  timer: NodeJS.Timeout | undefined;
  stopped: boolean;
  running: Promise<void> | undefined;
}

interface EndSnapshot {
  readonly at: number;
  readonly heartbeats: ReadonlyMap<number, bigint>;
  readonly statuses: ReadonlyMap<number, bigint>;
}

/** Wires the heartbeat service into a service context: batch worker, sweepers, dispatcher, guard. */
export async function startHeartbeat(ctx: ServiceContext, config: HeartbeatConfig, options: HeartbeatOptions = {}): Promise<RunningHeartbeat> {
  if (!ctx.redis) throw permanentError('SERVICE_WIRING', 'the heartbeat service needs a context with Redis');
  const { logger, metrics, topics } = ctx;
  const log = logger.child({ component: 'heartbeat' });
  const prefix = ctx.config.TOPIC_PREFIX;
  const keyPrefix = heartbeatKeyPrefix(prefix);
  const heartbeatTopic = topics['agent-heartbeats'];
  const statusTopic = topics['agent-status'];
  // Its own connection that fails fast while Redis is down (the context's queues commands for
  // BullMQ): the runtime then holds the partition and retries, and sweeps are skipped.
  const redis = ctx.redis.duplicate({ enableOfflineQueue: false, maxRetriesPerRequest: 1 });
  let redisDown = false;
  redis.on('error', (error: Error) => {
    if (!redisDown) log.warn({ err: error.message }, 'Redis unreachable: heartbeats wait in Kafka, sweeps are skipped');
    redisDown = true;
  });
  redis.on('ready', () => {
    if (redisDown) log.info('Redis reachable again');
    redisDown = false;
  });
  ctx.onShutdown(['heartbeat redis', async () => void (redis.status === 'ready' ? await redis.quit() : redis.disconnect())]);

  const settings: DeadlineSettings = { missFactor: config.HEARTBEAT_MISS_FACTOR, minTtlMs: config.HEARTBEAT_MIN_TTL_MS, defaultIntervalMs: config.HEARTBEAT_DEFAULT_INTERVAL_MS };
  const store = createHeartbeatStore(redis, keyPrefix, settings);
  const guard = new MassFailureGuard({ ratio: config.HEARTBEAT_MASS_FAILURE_RATIO, windowMs: config.HEARTBEAT_MASS_FAILURE_WINDOW_MS, minAgents: config.HEARTBEAT_MASS_FAILURE_MIN_AGENTS });
  const limiter = new RateLimiter(config.HEARTBEAT_RECOVER_RATE, config.HEARTBEAT_RECOVER_BURST, Date.now());
  const owned = new Map<number, Owned>();
  const held = new Map<number, number>();
  let suspended = false;
  let closed = false;
  let lastCounts = { tracked: 0, lapsed: 0 };

  async function handleHeartbeats(batch: DecodedBatch<AgentHeartbeat | AgentStatus>): Promise<void> {
    const now = Date.now();
    // One update per agent and instance: the last heartbeat of each in the batch (a stale instance's
    // must not hide the current one's), in the order of their last heartbeats.
    const latest = new Map<string, AgentHeartbeat>();
    // An instance's stop stands even if a heartbeat of it comes after in the batch (a retried send).
    const stopping = new Set<string>();
    for (const record of batch.records) {
      const hb = record.value as AgentHeartbeat;
      const key = `${hb.agentId}|${hb.instanceId}`;
      latest.delete(key);
      latest.set(key, hb);
      if (hb.stopping === true) stopping.add(key);
    }
    const updates = [...latest.entries()].map(([key, hb]) => ({
      agentId: hb.agentId,
      instanceId: hb.instanceId,
      intervalMs: hb.intervalMs ?? null,
      last: encodeLastHeartbeat(hb, now, hb.intervalMs ?? config.HEARTBEAT_DEFAULT_INTERVAL_MS),
      stopping: stopping.has(key),
    }));
    const result = await store.applyHeartbeats(batch.partition, now, updates);
    const duplicates = batch.records.length - latest.size;
    if (result.tracked > 0) metrics.heartbeatsReceived.inc({ outcome: 'tracked' }, result.tracked - result.resumed);
    if (result.resumed > 0) {
      metrics.heartbeatsReceived.inc({ outcome: 'resumed' }, result.resumed);
      metrics.heartbeatResumes.inc(result.resumed);
      log.info({ partition: batch.partition, resumed: result.resumed }, 'lapsed agents heartbeat again');
    }
    if (result.ignored > 0) metrics.heartbeatsReceived.inc({ outcome: 'ignored' }, result.ignored);
    if (result.otherInstance > 0) {
      metrics.heartbeatsReceived.inc({ outcome: 'other_instance' }, result.otherInstance);
      log.debug({ partition: batch.partition, otherInstance: result.otherInstance }, 'heartbeats of a stale instance ignored');
    }
    // Earlier heartbeats of an agent in the same batch, superseded by its last one.
    if (result.stopping > 0) {
      metrics.heartbeatsReceived.inc({ outcome: 'stopping' }, result.stopping);
      log.debug({ partition: batch.partition, stopping: result.stopping }, 'agents announced their stop: no longer tracked');
    }
    if (duplicates > 0) metrics.heartbeatsReceived.inc({ outcome: 'superseded' }, duplicates);
  }

  async function handleStatuses(batch: DecodedBatch<AgentHeartbeat | AgentStatus>): Promise<void> {
    const updates: StatusUpdate[] = [];
    for (const record of batch.records) {
      const status = record.value as AgentStatus;
      const action = trackingActionOf(status);
      // Records of an older writer schema carry no instanceId.
      if (action !== undefined) updates.push({ agentId: status.agentId, action, instanceId: status.instanceId ?? null });
    }
    if (updates.length > 0) await store.applyStatuses(batch.partition, Date.now(), updates);
  }

  const worker = createBatchWorker<AgentHeartbeat | AgentStatus, undefined>(
    {
      service: ctx.service,
      topics: [heartbeatTopic, statusTopic],
      groupId: options.groupId ?? `${prefix}agent-manager-heartbeat`,
      coPartitioned: true,
      deps: undefined,
      handler: (batch) => (batch.topic === heartbeatTopic ? handleHeartbeats(batch) : handleStatuses(batch)),
      validate: (value, topic) => (topic === heartbeatTopic ? validateHeartbeat(value) : validateStatus(value)),
      concurrency: config.HEARTBEAT_CONCURRENCY,
      sessionTimeoutMs: config.HEARTBEAT_SESSION_TIMEOUT_MS,
      heartbeatIntervalMs: Math.max(100, Math.floor(config.HEARTBEAT_SESSION_TIMEOUT_MS / 5)),
      retry: ctx.workerRetry,
      onRebalancing: () => {
        // What this member owns may be another's already: no sweep until the new assignment.
        suspended = true;
      },
      onAssignment: ({ assigned }) => {
        const mine = [...(assigned[heartbeatTopic] ?? [])];
        const statuses = [...(assigned[statusTopic] ?? [])];
        if (mine.length !== statuses.length || mine.some((p) => !statuses.includes(p))) {
          log.error({ heartbeats: mine, statuses }, 'partitions of agent-heartbeats and agent-status are not co-assigned (a member without the co-partitioned assigner in the group?): no sweeps on the unmatched ones');
        }
        const sweepable = mine.filter((p) => statuses.includes(p));
        for (const [partition, entry] of owned) if (!sweepable.includes(partition)) stopSweeper(partition, entry);
        for (const partition of sweepable) if (!owned.has(partition)) startSweeper(partition);
        suspended = false;
        log.info({ partitions: sweepable, graceMs: config.HEARTBEAT_FAILOVER_GRACE_MS }, 'sweeping partitions');
      },
    },
    { kafka: ctx.kafka, codec: ctx.codec, producer: ctx.producer, logger, metrics },
  );

  // The log ends, read once for every sweeper that needs them after a given time.
  let snapshot: EndSnapshot | undefined;
  let reading: { at: number; promise: Promise<EndSnapshot | undefined> } | undefined;
  async function endsAfter(time: number): Promise<EndSnapshot | undefined> {
    if (snapshot && snapshot.at >= time) return snapshot;
    if (reading && reading.at >= time) return reading.promise;
    const at = Date.now();
    const promise = (async () => {
      const heartbeats = worker.latestOffsets(heartbeatTopic);
      const statuses = worker.latestOffsets(statusTopic);
      if (!heartbeats || !statuses) return undefined;
      try {
        const [h, s] = await Promise.all([heartbeats, statuses]);
        const read: EndSnapshot = { at, heartbeats: h, statuses: s };
        if (!snapshot || snapshot.at < at) snapshot = read;
        return read;
      } catch (error) {
        log.warn({ err: errorMessage(error) }, 'reading the log ends failed; no lapse is declared until they are known');
        return undefined;
      } finally {
        if (reading?.at === at) reading = undefined;
      }
    })();
    reading = { at, promise };
    return promise;
  }

  /**
   * Once a deadline is due, the log ends are read (at `at`, after it); deadlines up to `at` lapse
   * as soon as both partitions are handled up to those ends. Under steady traffic the consumer is
   * never exactly at the end, so the ends read are kept until it has passed them.
   */
  async function sweep(partition: number, entry: Owned): Promise<void> {
    const now = Date.now();
    if (suspended || now < entry.since + config.HEARTBEAT_FAILOVER_GRACE_MS) return;
    if (!entry.waiting) {
      if (!(await store.anyDue(partition, now))) return;
      entry.waiting = await endsAfter(now);
    }
    const ends = entry.waiting;
    if (!ends || suspended || entry.stopped) return;
    const handled = [worker.progress(heartbeatTopic, partition)?.next, worker.progress(statusTopic, partition)?.next];
    if (!caughtUp(handled, [ends.heartbeats.get(partition), ends.statuses.get(partition)])) return;
    entry.waiting = undefined;
    const lapses = await store.sweep(partition, ends.at, Date.now(), SWEEP_LIMIT);
    if (lapses.length === 0) return;
    metrics.heartbeatLapses.inc(lapses.length);
    guard.recordLapses(Date.now(), lapses.length);
    log.warn({ partition, lapsed: lapses.length, agents: lapses.slice(0, 20).map((l) => l.agentId) }, 'heartbeat deadlines lapsed');
    await evaluateGuard(lastCounts);
  }

  async function dispatch(partition: number): Promise<void> {
    const pending = await store.pending(partition, DISPATCH_LIMIT);
    if (pending.length === 0) {
      held.set(partition, 0);
      return;
    }
    const now = Date.now();
    const send: PendingCommand[] = [];
    const recovers: PendingCommand[] = [];
    for (const command of pending) {
      if (command.kind !== 'recover') send.push(command);
      else if (!guard.tripped && now - command.score >= config.HEARTBEAT_RECOVER_HOLD_MS) recovers.push(command);
    }
    const granted = recovers.length === 0 ? 0 : limiter.take(now, recovers.length);
    // MISSED goes before the RECOVER of the same lapse: both are keyed by the agent (one partition, in order).
    send.push(...recovers.slice(0, granted));
    held.set(partition, pending.filter((c) => c.kind === 'recover').length - granted);
    metrics.heartbeatRecoversHeld.set([...held.values()].reduce((a, b) => a + b, 0));
    if (send.length === 0) return;
    const issuedAt = new Date();
    const events = send.map((command) => ({ key: command.agentId, value: commandOf(command, issuedAt) }));
    await ctx.events.send(topics['agent-commands'], events);
    const producedAt = Date.now();
    for (const command of send) {
      metrics.heartbeatCommands.inc({ command: COMMAND_OF[command.kind] });
      if (command.kind === 'missed') metrics.heartbeatDetectionSeconds.observe(Math.max(0, producedAt - command.score) / 1000);
    }
    await store.done(
      partition,
      send.map((c) => c.member),
    );
    log.info({ partition, commands: send.length, missed: send.filter((c) => c.kind === 'missed').length, recovers: granted }, 'heartbeat commands sent');
  }

  function commandOf(command: PendingCommand, issuedAt: Date): AgentCommand {
    const reason =
      command.kind === 'missed'
        ? `no heartbeat by the deadline ${new Date(command.score).toISOString()}`
        : command.kind === 'recover'
          ? `heartbeat missed (deadline ${new Date(command.score).toISOString()})`
          : 'heartbeats resumed';
    return {
      commandId: commandIdOf(keyPrefix, command.kind, command.agentId, command.lapse),
      agentId: command.agentId,
      command: COMMAND_OF[command.kind],
      requestId: null,
      spec: null,
      division: null,
      region: null,
      labels: {},
      issuedBy: 'heartbeat',
      issuedAt,
      reason,
      attempt: 1,
    };
  }

  async function evaluateGuard(counts: { tracked: number; lapsed: number }): Promise<void> {
    const change = guard.evaluate(Date.now(), counts);
    if (change) await reportGuard(change);
  }

  async function reportGuard(change: GuardChange): Promise<void> {
    metrics.heartbeatMassFailure.set(change.kind === 'tripped' ? 1 : 0);
    const payload = { lapses: change.lapses, tracked: change.tracked, ratio: change.ratio, threshold: config.HEARTBEAT_MASS_FAILURE_RATIO, windowMs: config.HEARTBEAT_MASS_FAILURE_WINDOW_MS };
    if (change.kind === 'tripped') log.error({ alert: 'HeartbeatMassFailure', ...payload }, 'mass heartbeat failure: recovers are held until it clears');
    else log.warn(payload, 'mass heartbeat failure cleared: recovers are released at the bounded rate');
    const event = buildAuditEvent({ actor: 'heartbeat', action: change.kind === 'tripped' ? 'heartbeat.mass_failure_detected' : 'heartbeat.mass_failure_cleared', agentId: null, requestId: null, traceId: null, payload });
    try {
      await ctx.events.send(topics['audit-events'], [{ key: event.eventId, value: event }]);
    } catch (error) {
      log.error({ err: errorMessage(error), event: event.action }, 'audit event of the mass-failure guard not produced');
    }
  }

  function startSweeper(partition: number): void {
    const entry: Owned = { since: Date.now(), waiting: undefined, timer: undefined, stopped: false, running: undefined };
    owned.set(partition, entry);
    const loop = () => {
      if (entry.stopped || closed) return;
      entry.running = (async () => {
        try {
          await sweep(partition, entry);
          if (!entry.stopped) await dispatch(partition);
        } catch (error) {
          log.warn({ partition, err: errorMessage(error) }, 'sweep failed; trying again at the next tick');
        }
      })();
      void entry.running.then(() => {
        if (!entry.stopped && !closed) entry.timer = setTimeout(loop, config.HEARTBEAT_SWEEP_INTERVAL_MS);
      });
    };
    entry.timer = setTimeout(loop, config.HEARTBEAT_SWEEP_INTERVAL_MS);
  }

  function stopSweeper(partition: number, entry: Owned): void {
    entry.stopped = true;
    clearTimeout(entry.timer);
    owned.delete(partition);
    held.delete(partition);
  }

  const guardTimer = setInterval(() => {
    void (async () => {
      try {
        lastCounts = await store.counts([...owned.keys()]);
        metrics.heartbeatTrackedAgents.set(lastCounts.tracked);
        await evaluateGuard(lastCounts);
      } catch (error) {
        if (!redisDown) log.warn({ err: errorMessage(error) }, 'counting tracked agents failed');
      }
    })();
  }, GUARD_EVERY_MS);
  metrics.heartbeatMassFailure.set(0);

  ctx.onShutdown([
    'heartbeat sweepers',
    async () => {
      closed = true;
      clearInterval(guardTimer);
      const running = [...owned.values()].flatMap((entry) => (entry.running ? [entry.running] : []));
      for (const [partition, entry] of owned) stopSweeper(partition, entry);
      await Promise.allSettled(running);
    },
  ]);
  ctx.onShutdown(['heartbeat worker', () => worker.stop()]);
  await worker.start();
  log.info({ topics: [heartbeatTopic, statusTopic], keyPrefix }, 'heartbeat service running');
  return {
    keyPrefix,
    worker,
    massFailure: () => guard.tripped,
    owned: () => [...owned.keys()].sort((a, b) => a - b),
  };
}
