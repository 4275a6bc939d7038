import { randomUUID } from 'node:crypto';
import { buildAuditEvent } from '../../lib/audit.ts';
import { createKeyedQueue } from '../../lib/keyed-queue.ts';
import type { AgentCommand, AgentSpec, AgentState, AgentStatus } from '../../lib/contracts/types.ts';
import { withTransaction, type Pool, type PoolClient } from '../../lib/db/pool.ts';
import { errorCode, errorMessage, isRetryable, retryableError, unavailableError } from '../../lib/errors.ts';
import { assertFence, isStaleFence, type LeaderFence } from '../../lib/leader/fence.ts';
import type { AvroCodec } from '../../lib/kafka/avro.ts';
import type { Logger } from '../../lib/logger.ts';
import type { Metrics } from '../../lib/metrics.ts';
import { enqueueEvents, type OutboxEvent } from '../../lib/outbox/outbox.ts';
import type { TopicNames } from '../../lib/service/context.ts';
import type { TraceContext } from '../../lib/tracing.ts';
import type { AgentWorkload, AllocatorDriver, DriverEvent } from './drivers/types.ts';
import { isLifecycleCommand, transition, type AgentSnapshot, type Effect, type LifecycleInput, type RestartPolicy, type RetryPolicy, type TransitionResult } from './lifecycle.ts';
import type { AgentResourceSpec } from './policy.ts';
import type { PolicyDecider } from './policy-client.ts';
import {
  claimRedrive,
  divisionGpuUsage,
  insertAgent,
  insertAgents,
  lockAgent,
  lockAgents,
  markCommandApplied,
  markCommandsApplied,
  unmarkCommands,
  updateAgent,
  updateAgents,
  type AgentRecord,
  type AgentUpdate,
  type NewAgent,
  type ObservedRecord,
} from './store.ts';

/**
 * The provisioner's I/O around the pure lifecycle: one input → (lock the agent row, transition,
 * persist version-checked, enqueue the status and audit events through the outbox) in ONE
 * transaction, then apply the effects through the driver, the policy decision point and the timers.
 * Effects that answer at once (policy, provision, destroy) feed their answer back as the next
 * input; slow ones (start, stop) answer later through the driver's events.
 */
export type TimerKind = 'start-timeout' | 'retry';

/** Delayed jobs (BullMQ in production) that come back as START_TIMEOUT / RETRY_DUE inputs. */
export interface TimerScheduler {
  schedule(agentId: string, kind: TimerKind, fence: { generation: number; attempt: number }, delayMs: number): Promise<void>;
  /** Best effort: the lifecycle's fence rejects a timer that fires anyway. */
  cancel(agentId: string, fence: { generation: number; attempt: number }): Promise<void>;
}

export interface ApplierDeps {
  readonly pool: Pool;
  readonly codec: AvroCodec;
  readonly topics: TopicNames;
  readonly logger: Logger;
  readonly driver: AllocatorDriver;
  readonly policy: PolicyDecider;
  readonly timers: TimerScheduler;
  readonly retryPolicy: RetryPolicy;
  readonly restartPolicy: RestartPolicy;
  /** Counts transitions, refusals and policy decisions when present. */
  readonly metrics?: Pick<Metrics, 'lifecycleTransitions' | 'lifecycleRejections' | 'policyDecisions'>;
}

/** Where an input came from: a Kafka command (with its ids), a driver report, a timer, the reconciler. */
export interface InputOrigin {
  readonly actor: string;
  readonly command?: AgentCommand;
  readonly requestId?: string | null;
  readonly trace?: TraceContext;
  /** Extra facts for the audit event (e.g. the policy decision and its reasons). */
  readonly audit?: Record<string, unknown>;
  /**
   * The leader's term, for the reconciler's repairs: checked in the transaction that decides (after
   * the agent's row is locked); a stale one fails with STALE_FENCE and nothing is applied.
   */
  readonly fence?: LeaderFence;
}

export interface ApplyOutcome {
  readonly agentId: string;
  readonly result: TransitionResult | { readonly ok: true; readonly noop: true; readonly duplicate: true };
}

export interface LifecycleApplier {
  /** Applies an input and every immediate follow-up; serialized per agent within this process. */
  apply(agentId: string, input: LifecycleInput, origin: InputOrigin): Promise<ApplyOutcome[]>;
  /**
   * Re-applies the effects a state is waiting on (the reconciler's repair after a crash), only if
   * the agent is still exactly as the reconciler saw it and `origin.fence` is current: claim, fence
   * check and effects in one transaction that holds the agent's row, so two leaders never both act.
   */
  redrive(agent: ObservedRecord, effects: readonly Effect[], origin: InputOrigin): Promise<void>;
  /**
   * Applies a batch of inputs (a Kafka batch of commands) with the result of each as if applied one
   * by one in batch order: per round one transaction for all (set-based statements, each agent's
   * version still checked), the effects left to the driver and the timers after its commit. An
   * input that fails is reported in its slot, and the later inputs for its agent are not applied
   * (`skipped`); the others are.
   */
  applyBatch(items: readonly BatchInput[]): Promise<BatchItemResult[]>;
  /** Turns a driver's report into a lifecycle input (wire it to the driver's `onEvent`); reports arriving together are applied as one batch. */
  onDriverEvent(agentId: string, event: DriverEvent): void;
  /** Resolves when every input accepted so far has been applied. */
  idle(): Promise<void>;
  /**
   * Removes the resources of an agent the database does not know (or knows as DESTROYED). Runs in
   * the agent's queue, after any transition in flight: an agent being created has resources (a
   * provision inside its transaction) before its row is committed, and must not be taken for one.
   */
  removeOrphan(agentId: string, fence?: LeaderFence): Promise<boolean>;
  /** Ignores driver reports from now on (shutdown: the reconciler of the next process repairs). */
  close(): void;
}

interface Step {
  readonly input: LifecycleInput;
  readonly origin: InputOrigin;
}

/** One input of a batch. */
export interface BatchInput extends Step {
  readonly agentId: string;
}

export type BatchItemResult =
  | { readonly ok: true; readonly outcomes: ApplyOutcome[] }
  /** `skipped`: not tried, because an earlier input for the same agent failed. */
  | { readonly ok: false; readonly error: unknown; readonly skipped?: boolean };

type BatchResultSlot = BatchItemResult | undefined;

const DUPLICATE = { ok: true, noop: true, duplicate: true } as const;

/** GPUs to add to a division's stored usage (decisions of the same transaction not written yet). */
type UsageAdjust = (division: string, exceptAgentId: string) => number;

/** The GPUs an agent holds against its division's quota (what `divisionGpuUsage` counts). */
function liveGpus(agent: AgentRecord | undefined): number {
  if (agent === undefined || agent.snapshot.state === 'DESTROYED' || agent.snapshot.state === 'REJECTED' || agent.snapshot.state === 'FAILED') return 0;
  return agent.spec.resources.gpuCount;
}

interface Decision {
  readonly outcome: ApplyOutcome;
  readonly events: readonly OutboxEvent[];
  /** Accepted and not a noop: the agent as to be written, with the request and command to record. */
  readonly agent?: AgentRecord;
  readonly ids?: { readonly requestId: string | null; readonly commandId: string | null };
  /** Left to apply after the commit. */
  readonly effects?: readonly Effect[];
  readonly origin?: InputOrigin;
}

interface Round {
  readonly applied: { index: number; outcome: ApplyOutcome }[];
  readonly followUps: { index: number; agent: AgentRecord; effects: readonly Effect[]; before: AgentSnapshot | undefined; origin: InputOrigin }[];
  /** Inputs left for the next round, in batch order. */
  readonly deferred: number[];
}

function imageOf(spec: AgentSpec): string {
  // A template without an image runs the template's image from the internal registry.
  return spec.image ?? `registry.internal/agent-templates/${spec.template ?? 'default'}:latest`;
}

export function policyResourceSpec(spec: AgentSpec): AgentResourceSpec {
  return {
    image: imageOf(spec),
    gpuCount: spec.resources.gpuCount,
    gpuType: spec.resources.gpuType,
    cpu: spec.resources.cpuMillicores / 1000,
    memoryMb: spec.resources.memoryMiB,
  };
}

export function workloadOf(agent: Pick<AgentRecord, 'id' | 'spec' | 'division' | 'region' | 'labels'>): AgentWorkload {
  return { agentId: agent.id, spec: agent.spec, division: agent.division, region: agent.region, labels: agent.labels };
}

export function driverEventInput(event: DriverEvent): LifecycleInput {
  switch (event.type) {
    case 'STARTED':
      return { type: 'STARTED', generation: event.generation, attempt: event.attempt, instanceId: event.instanceId, reason: `instance ${event.instanceId} is up` };
    case 'PROCESS_EXITED':
      return { type: 'PROCESS_EXITED', generation: event.generation, attempt: event.attempt, exitCode: event.exitCode, signal: event.signal };
    case 'DRIVER_FAILED':
      return { type: 'DRIVER_FAILED', generation: event.generation, attempt: event.attempt, retryable: event.retryable, reason: event.reason };
    case 'STOPPED':
      return { type: 'STOPPED' };
  }
}

/**
 * The instance a status names: the running one (RUNNING, UNHEALTHY) when known, so the heartbeat
 * service can ignore heartbeats of a stale process of the agent; null in every other state.
 */
export function instanceOf(state: AgentState, snapshot: AgentSnapshot | undefined): string | null {
  return (state === 'RUNNING' || state === 'UNHEALTHY') && typeof snapshot?.instanceId === 'string' ? snapshot.instanceId : null;
}

/**
 * A repair waits this long at most for the agent's row: a leader stalled inside its own repair
 * (which holds the row while its driver call runs) must not stall its successor's whole round;
 * the repair fails (55P03) and the next round tries again.
 */
const REPAIR_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'";

export function createLifecycleApplier(deps: ApplierDeps): LifecycleApplier {
  const log = deps.logger;
  // Inputs about one agent are applied one at a time, in arrival order.
  const perAgent = createKeyedQueue();
  let closed = false;
  // Driver reports arriving in the same turn of the event loop are applied as one batch.
  let reports: BatchInput[] = [];
  const reportBatches = new Set<Promise<void>>();
  function flushReports(): void {
    if (reports.length === 0) return;
    const batch = reports;
    reports = [];
    const applied = applyBatch(batch).then((results) => {
      results.forEach((result, index) => {
        if (result.ok) return;
        const { agentId, input } = batch[index] as BatchInput;
        // The reconciler compares the driver's view with the stored state and repairs what this lost.
        log.error({ agentId, event: input.type, code: errorCode(result.error), err: errorMessage(result.error) }, 'driver event not applied');
      });
    }, (error: unknown) => log.error({ reports: batch.length, code: errorCode(error), err: errorMessage(error) }, 'driver events not applied'));
    reportBatches.add(applied);
    void applied.finally(() => reportBatches.delete(applied));
  }

  function statusEvent(agentId: string, state: AgentState, previous: AgentState | null, reason: string, version: number, origin: InputOrigin, snapshot?: AgentSnapshot): OutboxEvent {
    const value: AgentStatus = {
      eventId: randomUUID(),
      agentId,
      state,
      previousState: previous,
      reason,
      requestId: origin.command?.requestId ?? origin.requestId ?? null,
      commandId: origin.command?.commandId ?? null,
      version,
      time: new Date(),
      instanceId: instanceOf(state, snapshot),
    };
    return { topic: deps.topics['agent-status'], key: agentId, value, eventId: value.eventId, ...(origin.trace ? { trace: origin.trace } : {}) };
  }

  function auditEvent(agentId: string, action: string, payload: Record<string, unknown>, origin: InputOrigin): OutboxEvent {
    const value = buildAuditEvent({
      actor: origin.actor,
      action,
      agentId,
      requestId: origin.command?.requestId ?? origin.requestId ?? null,
      traceId: origin.trace?.traceId ?? null,
      payload: { ...payload, ...origin.audit, commandId: origin.command?.commandId ?? null },
    });
    return { topic: deps.topics['audit-events'], key: agentId, value, eventId: value.eventId, ...(origin.trace ? { trace: origin.trace } : {}) };
  }

  /**
   * Effects answered at once without leaving the machine (the local policy; a local or simulated
   * provision) are applied inside the transaction, so their follow-up transitions commit together:
   * fewer round trips, and no window in which a crash leaves them half done.
   */
  const inline = (effect: Effect): boolean =>
    (effect.type === 'CHECK_POLICY' && deps.policy.source === 'local') || (effect.type === 'PROVISION' && (deps.driver.name === 'local' || deps.driver.name === 'simulated'));

  /**
   * What one input, and the follow-ups of its inline effects, make of an agent as `current` (read in
   * the transaction of `client`): the events to enqueue and, when anything was accepted, the agent as
   * to be written with the effects left to apply after the commit. Writes nothing itself.
   */
  async function decide(client: PoolClient, agentId: string, current: AgentRecord | undefined, step: Step, usage?: UsageAdjust): Promise<Decision> {
    const { input, origin } = step;
    const command = origin.command;
    const first = transition(current?.snapshot, input, deps.retryPolicy);
    if (!first.ok) {
      deps.metrics?.lifecycleRejections.inc({ input: input.type, code: first.rejection.code });
      // A command is answered on agent-status; a late or stale internal event (the heartbeat
      // service's signals included) only logged.
      if (command && isLifecycleCommand(command.command)) {
        const state = current?.snapshot.state ?? 'REJECTED';
        const reason = `${command.command} rejected: ${first.rejection.code}: ${first.rejection.reason}`;
        return {
          outcome: { agentId, result: first },
          events: [
            statusEvent(agentId, state, current?.snapshot.state ?? null, reason, current?.version ?? 0, origin, current?.snapshot),
            auditEvent(agentId, 'command.rejected', { command: command.command, code: first.rejection.code, reason: first.rejection.reason, state }, origin),
          ],
        };
      }
      log.debug({ agentId, input: input.type, code: first.rejection.code, reason: first.rejection.reason }, 'internal event not applied');
      return { outcome: { agentId, result: first }, events: [] };
    }
    if (first.noop) return { outcome: { agentId, result: first }, events: [] };

    let agent: AgentRecord;
    if (current === undefined) {
      if (!command?.spec) {
        // Lifecycle only creates on INSTANTIATE; without a spec there is nothing to run.
        return {
          outcome: { agentId, result: { ok: false, rejection: { code: 'INVALID_INPUT', reason: 'INSTANTIATE without a spec' } } },
          events: [
            statusEvent(agentId, 'REJECTED', null, 'INSTANTIATE rejected: the command carries no agent spec', 0, origin),
            auditEvent(agentId, 'command.rejected', { command: 'INSTANTIATE', code: 'INVALID_INPUT', reason: 'no spec' }, origin),
          ],
        };
      }
      const snapshot = { ...first.snapshot, restartPolicy: input.type === 'INSTANTIATE' && input.restartPolicy ? input.restartPolicy : deps.restartPolicy };
      const division = command.division ?? 'default';
      agent = { id: agentId, snapshot, spec: command.spec, division, region: command.region, labels: command.labels, version: 0, updatedAt: new Date() };
    } else {
      agent = current;
    }

    // Apply the first result, then each inline effect's follow-up, as consecutive versions.
    const events: OutboxEvent[] = [];
    let result: TransitionResult = first;
    let stepInput = input;
    let stepOrigin = origin;
    let pending: Effect[] = [];
    for (;;) {
      if (!result.ok) {
        deps.metrics?.lifecycleRejections.inc({ input: stepInput.type, code: result.rejection.code });
        log.debug({ agentId, input: stepInput.type, code: result.rejection.code, reason: result.rejection.reason }, 'follow-up not applied');
        break;
      }
      if (result.noop) break;
      deps.metrics?.lifecycleTransitions.inc({ from: result.previous ?? 'NONE', to: result.state });
      const snapshot = agent.version === 0 ? { ...result.snapshot, restartPolicy: agent.snapshot.restartPolicy } : result.snapshot;
      agent = { ...agent, snapshot, version: agent.version + 1 };
      events.push(
        statusEvent(agentId, result.state, result.previous ?? null, result.reason, agent.version, stepOrigin, agent.snapshot),
        auditEvent(agentId, 'agent.state_changed', { from: result.previous ?? null, to: result.state, input: stepInput.type, reason: result.reason, version: agent.version }, stepOrigin),
      );
      const [head, ...rest] = result.effects;
      if (head === undefined || !inline(head)) {
        pending = [...result.effects];
        break;
      }
      pending = [];
      // Inside the transaction, reads use its connection: a second one from the pool could wait on
      // a pool that every open transaction is also waiting on.
      const next = await runEffect(agent, head, undefined, stepOrigin, client, usage);
      if (rest.length > 0) log.warn({ agentId, effects: rest.map((e) => e.type) }, 'effects after an inline effect are not expected; applying them after the commit');
      pending.push(...rest);
      if (!next) break;
      stepInput = next.input;
      stepOrigin = next.origin;
      result = transition(agent.snapshot, stepInput, deps.retryPolicy);
    }
    const ids = { requestId: command?.requestId ?? origin.requestId ?? null, commandId: command?.commandId ?? null };
    return { outcome: { agentId, result: first }, events, agent, effects: pending, origin: stepOrigin, ids };
  }

  /** One input, and the follow-ups of its inline effects, in one transaction of its own. */
  async function applyOnce(agentId: string, step: Step): Promise<{ outcome: ApplyOutcome; agent?: AgentRecord; before?: AgentSnapshot; effects?: readonly Effect[]; origin?: InputOrigin }> {
    const { origin } = step;
    return withTransaction(deps.pool, async (client: PoolClient) => {
      const command = origin.command;
      if (command && !(await markCommandApplied(client, command.commandId, agentId))) {
        return { outcome: { agentId, result: DUPLICATE } };
      }
      const current = await lockAgent(client, agentId);
      if (origin.fence) await assertFence(client, origin.fence);
      const decision = await decide(client, agentId, current, step);
      const { agent, ids } = decision;
      if (agent && ids) {
        if (current === undefined) await insertAgent(client, { ...agent, ...ids });
        else await updateAgent(client, agentId, current.version, agent.version, agent.snapshot, ids);
      }
      if (decision.events.length > 0) await enqueueEvents(client, deps.codec, decision.events);
      if (!agent) return { outcome: decision.outcome };
      return { outcome: decision.outcome, agent, effects: decision.effects ?? [], origin: decision.origin ?? origin, ...(current ? { before: current.snapshot } : {}) };
    });
  }

  /**
   * One round of a batch, in one transaction: the inputs from the first not applied yet, in batch
   * order, up to the first one for an agent whose earlier input left effects to apply after the
   * commit (one by one, those effects, and their follow-ups, would come before it). Commands are
   * marked applied, rows locked, inserted and updated (version-checked), and the events enqueued,
   * each in one statement for the whole round.
   */
  async function applyRound(client: PoolClient, items: readonly BatchInput[], pending: readonly number[], firstOfCommand: ReadonlyMap<string, number>): Promise<Round> {
    const toMark: { commandId: string; agentId: string }[] = [];
    for (const index of pending) {
      const item = items[index] as BatchInput;
      const commandId = item.origin.command?.commandId;
      if (commandId !== undefined && firstOfCommand.get(commandId) === index) toMark.push({ commandId, agentId: item.agentId });
    }
    const fresh = await markCommandsApplied(client, toMark);
    const start = await lockAgents(client, [...new Set(pending.map((index) => (items[index] as BatchInput).agentId))]);
    const fences = new Set(pending.map((index) => (items[index] as BatchInput).origin.fence).filter((fence) => fence !== undefined));
    for (const fence of fences) await assertFence(client, fence);

    const current = new Map(start);
    const created = new Set<string>();
    const ids = new Map<string, { requestId: string | null; commandId: string | null }>();
    // GPUs the round's own decisions add to (or free from) a division, not yet in the table.
    const usage: UsageAdjust = (division, exceptAgentId) => {
      let delta = 0;
      for (const [id, agent] of current) if (id !== exceptAgentId && agent.division === division) delta += liveGpus(agent) - liveGpus(start.get(id));
      return delta;
    };
    const round: Round = { applied: [], followUps: [], deferred: [] };
    const events: OutboxEvent[] = [];
    const blocked = new Set<string>();
    for (const index of pending) {
      const item = items[index] as BatchInput;
      if (round.deferred.length > 0 || blocked.has(item.agentId)) {
        round.deferred.push(index);
        continue;
      }
      const commandId = item.origin.command?.commandId;
      if (commandId !== undefined && (firstOfCommand.get(commandId) !== index || !fresh.has(commandId))) {
        round.applied.push({ index, outcome: { agentId: item.agentId, result: DUPLICATE } });
        continue;
      }
      const before = current.get(item.agentId);
      const decision = await decide(client, item.agentId, before, item, usage);
      events.push(...decision.events);
      round.applied.push({ index, outcome: decision.outcome });
      const { agent } = decision;
      if (agent === undefined || decision.ids === undefined) continue;
      if (before === undefined) created.add(item.agentId);
      current.set(item.agentId, agent);
      const was = ids.get(item.agentId);
      ids.set(item.agentId, { requestId: decision.ids.requestId ?? was?.requestId ?? null, commandId: decision.ids.commandId ?? was?.commandId ?? null });
      const effects = decision.effects ?? [];
      if (effects.length > 0) {
        round.followUps.push({ index, agent, effects, before: before?.snapshot, origin: decision.origin ?? item.origin });
        blocked.add(item.agentId);
      }
    }

    const inserts: NewAgent[] = [];
    const updates: AgentUpdate[] = [];
    for (const [agentId, written] of ids) {
      const agent = current.get(agentId) as AgentRecord;
      const was = start.get(agentId);
      if (created.has(agentId) || was === undefined) inserts.push({ ...agent, ...written });
      else updates.push({ agentId, expectedVersion: was.version, newVersion: agent.version, snapshot: agent.snapshot, ...written });
    }
    await insertAgents(client, inserts);
    await updateAgents(client, updates);
    if (events.length > 0) await enqueueEvents(client, deps.codec, events);
    // Commands of the inputs put off to the next round are marked then.
    await unmarkCommands(
      client,
      round.deferred.flatMap((index) => {
        const commandId = (items[index] as BatchInput).origin.command?.commandId;
        return commandId !== undefined && firstOfCommand.get(commandId) === index && fresh.has(commandId) ? [commandId] : [];
      }),
    );
    return round;
  }

  /** The batch's inputs from `pending` on, one transaction each (after a batch transaction failed): the inputs that fail are told apart. */
  async function applyEach(items: readonly BatchInput[], pending: readonly number[], results: BatchResultSlot[]): Promise<void> {
    const failed = new Set<string>();
    for (const index of pending) {
      const item = items[index] as BatchInput;
      if (failed.has(item.agentId)) {
        results[index] = { ok: false, skipped: true, error: retryableError('EARLIER_INPUT_FAILED', `an earlier input for agent ${item.agentId} failed`) };
        continue;
      }
      try {
        results[index] = { ok: true, outcomes: await applyChain(item.agentId, item) };
      } catch (error) {
        results[index] = { ok: false, error };
        failed.add(item.agentId);
      }
    }
  }

  /**
   * Runs `work` holding the queues of every agent in `agentIds`. The slots are all asked for at once
   * (synchronously), so two batches take their common agents in the same order and never wait on
   * each other in a cycle.
   */
  async function withAgents<T>(agentIds: readonly string[], work: () => Promise<T>): Promise<T> {
    let release: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      release = resolve;
    });
    const held = agentIds.map((id) => new Promise<void>((resolve) => void perAgent.run(id, () => (resolve(), done))));
    try {
      await Promise.all(held);
      return await work();
    } finally {
      release();
    }
  }

  async function applyBatch(items: readonly BatchInput[]): Promise<BatchItemResult[]> {
    const results: BatchResultSlot[] = items.map(() => undefined);
    if (items.length === 0) return [];
    // Of a command delivered twice in the batch, the first is the one applied (as one by one).
    const firstOfCommand = new Map<string, number>();
    items.forEach((item, index) => {
      const commandId = item.origin.command?.commandId;
      if (commandId !== undefined && !firstOfCommand.has(commandId)) firstOfCommand.set(commandId, index);
    });
    await withAgents([...new Set(items.map((item) => item.agentId))], async () => {
      let pending = items.map((_, index) => index);
      while (pending.length > 0) {
        let round: Round;
        try {
          round = await withTransaction(deps.pool, (client) => applyRound(client, items, pending, firstOfCommand));
        } catch (error) {
          log.debug({ inputs: pending.length, code: errorCode(error), err: errorMessage(error) }, 'batch transaction failed; applying its inputs one by one');
          await applyEach(items, pending, results);
          return;
        }
        for (const { index, outcome } of round.applied) results[index] = { ok: true, outcomes: [outcome] };
        // Committed: the effects left (driver, timers) run per agent, concurrently across agents.
        const failed = new Set<string>();
        await Promise.all(
          round.followUps.map(async ({ index, agent, effects, before, origin }) => {
            try {
              const outcomes: ApplyOutcome[] = [];
              for (const step of await runEffects(agent, effects, before, origin)) outcomes.push(...(await applyChain(agent.id, step)));
              const slot = results[index];
              if (slot?.ok) slot.outcomes.push(...outcomes);
            } catch (error) {
              results[index] = { ok: false, error };
              failed.add(agent.id);
            }
          }),
        );
        pending = [];
        for (const index of round.deferred) {
          const item = items[index] as BatchInput;
          if (failed.has(item.agentId)) {
            results[index] = { ok: false, skipped: true, error: retryableError('EARLIER_INPUT_FAILED', `an earlier input for agent ${item.agentId} failed`) };
          } else {
            pending.push(index);
          }
        }
      }
    });
    return results.map((result) => result ?? { ok: false, skipped: true, error: retryableError('INPUT_NOT_APPLIED', 'input not applied') });
  }

  /** Applies one effect; returns the input it answers with at once, if any. */
  async function runEffect(agent: AgentRecord, effect: Effect, before: AgentSnapshot | undefined, origin: InputOrigin, db: Pool | PoolClient = deps.pool, usage?: UsageAdjust): Promise<Step | undefined> {
    const follow = (input: LifecycleInput, audit?: Record<string, unknown>): Step => ({
      input,
      origin: { actor: 'provisioner', requestId: origin.command?.requestId ?? origin.requestId ?? null, ...(origin.trace ? { trace: origin.trace } : {}), ...(audit ? { audit } : {}) },
    });
    switch (effect.type) {
      case 'CHECK_POLICY': {
        // A request for no GPU cannot exceed a GPU quota: skip counting the division's GPUs.
        const gpus = agent.spec.resources.gpuCount > 0 ? (await divisionGpuUsage(db, agent.division, agent.id)) + (usage?.(agent.division, agent.id) ?? 0) : 0;
        const decision = await deps.policy.decide(
          {
            agentId: agent.id,
            action: origin.command?.command ?? 'INSTANTIATE',
            spec: policyResourceSpec(agent.spec),
            division: agent.division,
            region: agent.region ?? 'default',
            requestedBy: origin.command?.issuedBy ?? origin.actor,
          },
          { gpus },
        );
        if (decision.unavailable) {
          // Nothing is provisioned (fail closed), and nothing is rejected for an outage: the agent
          // stays PROVISIONING and the reconciler asks again once the check counts as stuck.
          throw unavailableError('policy', 'POLICY_UNAVAILABLE', decision.reasons.join('; '));
        }
        deps.metrics?.policyDecisions.inc({ allow: String(decision.allow), source: decision.source });
        const audit = { policy: { allow: decision.allow, reasons: decision.reasons, source: decision.source } };
        return decision.allow
          ? follow({ type: 'POLICY_ALLOWED', reason: `${decision.source} policy` }, audit)
          : follow({ type: 'POLICY_DENIED', reason: decision.reasons.join('; ') }, audit);
      }
      case 'PROVISION':
        try {
          await deps.driver.provision(workloadOf(agent));
          return follow({ type: 'PROVISIONED' });
        } catch (error) {
          return follow({ type: 'DRIVER_FAILED', retryable: isRetryable(error), reason: `provision failed: ${errorMessage(error)}` });
        }
      case 'START_PROCESS':
        try {
          await deps.driver.start(workloadOf(agent), { generation: effect.generation, attempt: effect.attempt });
          return undefined;
        } catch (error) {
          return follow({ type: 'DRIVER_FAILED', generation: effect.generation, attempt: effect.attempt, retryable: isRetryable(error), reason: `start failed: ${errorMessage(error)}` });
        }
      case 'STOP_PROCESS':
        await deps.driver.stop(agent.id, effect.graceMs, origin.fence);
        return undefined;
      case 'DESTROY_RESOURCES':
        try {
          await deps.driver.destroy(agent.id, origin.fence);
          return follow({ type: 'DESTROYED' });
        } catch (error) {
          if (isStaleFence(error)) throw error;
          // Left in DESTROYING: the reconciler repeats the destroy.
          log.warn({ agentId: agent.id, err: errorMessage(error) }, 'destroy failed; the reconciler will retry');
          return undefined;
        }
      case 'SCHEDULE_TIMEOUT':
        await deps.timers.schedule(agent.id, 'start-timeout', { generation: effect.generation, attempt: effect.attempt }, effect.delayMs);
        return undefined;
      case 'SCHEDULE_RETRY':
        await deps.timers.schedule(agent.id, 'retry', { generation: effect.generation, attempt: effect.attempt }, effect.delayMs);
        return undefined;
      case 'CANCEL_TIMERS':
        if (before) await deps.timers.cancel(agent.id, { generation: before.generation, attempt: before.startAttempt });
        return undefined;
    }
  }

  async function runEffects(agent: AgentRecord, effects: readonly Effect[], before: AgentSnapshot | undefined, origin: InputOrigin, db: Pool | PoolClient = deps.pool): Promise<Step[]> {
    const next: Step[] = [];
    for (const effect of effects) {
      try {
        const step = await runEffect(agent, effect, before, origin, db);
        if (step) next.push(step);
      } catch (error) {
        // A deposed leader's repair: nothing more of it runs (and its claim is rolled back).
        if (isStaleFence(error)) throw error;
        // The transition is committed (a redelivered command would be a duplicate): an effect that
        // failed is left to the reconciler, which drives stuck states again, and the others still run.
        log.warn({ agentId: agent.id, effect: effect.type, code: errorCode(error), err: errorMessage(error) }, 'effect failed after the transition; the reconciler repairs it');
      }
    }
    return next;
  }

  async function applyChain(agentId: string, first: Step): Promise<ApplyOutcome[]> {
    const outcomes: ApplyOutcome[] = [];
    const queue: Step[] = [first];
    for (let step = queue.shift(); step !== undefined; step = queue.shift()) {
      const { outcome, agent, before, effects, origin } = await applyOnce(agentId, step);
      outcomes.push(outcome);
      if (agent && effects && effects.length > 0) queue.push(...(await runEffects(agent, effects, before, origin ?? step.origin)));
    }
    return outcomes;
  }

  return {
    apply(agentId, input, origin) {
      return perAgent.run(agentId, () => applyChain(agentId, { input, origin }));
    },
    redrive(agent, effects, origin) {
      return perAgent.run(agent.id, async () => {
        // The reconciler's view may be stale by now (another leader redrove it, a transition came):
        // act only on the exact row it looked at. The driver's effects run while the row is held,
        // so a successor deciding about this agent waits and then finds it claimed.
        const steps = await withTransaction(deps.pool, async (client) => {
          await client.query(REPAIR_LOCK_TIMEOUT);
          const current = await claimRedrive(client, agent.id, agent.version, agent.stamp);
          if (current === undefined) return [];
          if (origin.fence) await assertFence(client, origin.fence);
          return runEffects(current, effects, undefined, origin, client);
        });
        for (const step of steps) await applyChain(agent.id, step);
      });
    },
    applyBatch,
    onDriverEvent(id, event) {
      if (closed) {
        log.debug({ agentId: id, event: event.type }, 'driver report after shutdown began; ignored');
        return;
      }
      reports.push({ agentId: id, input: driverEventInput(event), origin: { actor: 'provisioner/driver' } });
      if (reports.length === 1) setImmediate(flushReports);
    },
    async idle() {
      while (reports.length > 0 || reportBatches.size > 0) {
        flushReports();
        await Promise.all(reportBatches);
      }
      await perAgent.idle();
    },
    removeOrphan(agentId, fence) {
      return perAgent.run(agentId, () =>
        withTransaction(deps.pool, async (client) => {
          await client.query(REPAIR_LOCK_TIMEOUT);
          const agent = await lockAgent(client, agentId);
          if (agent !== undefined && agent.snapshot.state !== 'DESTROYED') return false;
          if (fence) await assertFence(client, fence);
          await deps.driver.destroy(agentId, fence);
          return true;
        }),
      );
    },
    close() {
      closed = true;
    },
  };
}
