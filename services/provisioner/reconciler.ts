import type { Pool } from '../../lib/db/pool.ts';
import { errorMessage } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import type { LifecycleApplier } from './apply.ts';
import type { AllocatorDriver, ObservedAgent } from './drivers/types.ts';
import type { Effect, LifecycleInput, RetryPolicy } from './lifecycle.ts';
import { knownAgentIds, listLiveAgents, type AgentRecord } from './store.ts';

/**
 * Compares what the database wants with what the driver reports and repairs the difference. Run by
 * the leader only. Each rule is a plain function of (agent, observation, age), so it is unit-tested
 * without I/O; `reconcileOnce` applies the repairs through the same lifecycle applier as commands.
 */
export type Repair =
  | { readonly kind: 'input'; readonly input: LifecycleInput; readonly why: string }
  | { readonly kind: 'redrive'; readonly effects: readonly Effect[]; readonly why: string }
  | { readonly kind: 'stop'; readonly why: string };

export interface RepairContext {
  /** Time since the agent's last transition. */
  readonly ageMs: number;
  /** A transitional state older than this lost its effect (a crash) and is driven again. */
  readonly stuckAfterMs: number;
  readonly retryPolicy: RetryPolicy;
}

export function repairFor(agent: AgentRecord, observed: ObservedAgent, context: RepairContext): Repair | undefined {
  const s = agent.snapshot;
  const stuck = context.ageMs >= context.stuckAfterMs;
  const fence = { generation: s.generation, attempt: s.startAttempt };
  const sameFence = observed.fence !== null && observed.fence.generation === s.generation && observed.fence.attempt === s.startAttempt;
  switch (s.state) {
    case 'RUNNING':
    case 'UNHEALTHY':
      return observed.running
        ? undefined
        : { kind: 'input', input: { type: 'PROCESS_EXITED', ...fence, exitCode: null, signal: null, reason: 'no longer running (found by the reconciler)' }, why: 'process gone' };
    case 'STARTING': {
      if (!stuck) return undefined;
      const policy = context.retryPolicy;
      // The timers are delayed jobs; should one be lost (a crash before it was scheduled, Redis
      // down), the reconciler delivers it late. The fence makes a duplicate harmless.
      if (s.awaitingRetry) {
        return context.ageMs >= policy.maxDelayMs + context.stuckAfterMs ? { kind: 'input', input: { type: 'RETRY_DUE', ...fence }, why: 'retry timer lost' } : undefined;
      }
      // The start report was lost (e.g. the provisioner died before the agent said ready).
      if (observed.running && sameFence) return { kind: 'input', input: { type: 'STARTED', ...fence, reason: 'found running by the reconciler' }, why: 'missed start report' };
      return context.ageMs >= policy.startTimeoutMs + context.stuckAfterMs ? { kind: 'input', input: { type: 'START_TIMEOUT', ...fence }, why: 'start deadline lost' } : undefined;
    }
    case 'PENDING':
      return stuck ? { kind: 'redrive', effects: [{ type: 'CHECK_POLICY' }], why: 'policy check lost' } : undefined;
    case 'PROVISIONING':
      return stuck ? { kind: 'redrive', effects: [{ type: 'PROVISION' }], why: 'provision lost' } : undefined;
    case 'STOPPING':
      return stuck ? { kind: 'redrive', effects: [{ type: 'STOP_PROCESS', graceMs: context.retryPolicy.stopGraceMs }], why: 'stop lost' } : undefined;
    case 'DESTROYING':
      return stuck ? { kind: 'redrive', effects: [{ type: 'DESTROY_RESOURCES' }], why: 'destroy lost' } : undefined;
    case 'STOPPED':
    case 'FAILED':
      return observed.running ? { kind: 'stop', why: `running although ${s.state}` } : undefined;
    default:
      return undefined;
  }
}

export interface ReconcilerOptions {
  readonly pool: Pool;
  readonly driver: AllocatorDriver;
  readonly applier: LifecycleApplier;
  readonly logger: Logger;
  readonly retryPolicy: RetryPolicy;
  readonly stuckAfterMs: number;
  readonly batchSize?: number;
}

export interface ReconcileReport {
  readonly checked: number;
  readonly repaired: number;
  readonly orphansRemoved: number;
}

export interface ReconcileRound extends ReconcileReport {
  /** Where the next round goes on (null: from the start again). */
  readonly cursor: string | null;
}

/**
 * One round over one page of agents (by id, carrying on from `cursor`), so every agent is visited
 * in turn however many there are. `mayAct` is asked before each repair: leadership can end, and
 * safe mode begin, in the middle of a round.
 */
export async function reconcileOnce(options: ReconcilerOptions, cursor: string | null = null, mayAct: () => boolean = () => true): Promise<ReconcileRound> {
  const { driver, applier, logger } = options;
  const pageSize = options.batchSize ?? 500;
  const agents = await listLiveAgents(options.pool, cursor, pageSize);
  let repaired = 0;
  for (const agent of agents) {
    if (!mayAct()) break;
    try {
      const observed = await driver.observe(agent.id);
      const repair = repairFor(agent, observed, { ageMs: agent.ageMs, stuckAfterMs: options.stuckAfterMs, retryPolicy: options.retryPolicy });
      if (!repair || !mayAct()) continue;
      repaired += 1;
      logger.warn({ agentId: agent.id, state: agent.snapshot.state, repair: repair.kind, why: repair.why }, 'reconciler repairing drift');
      const origin = { actor: 'provisioner/reconciler' };
      if (repair.kind === 'input') await applier.apply(agent.id, repair.input, origin);
      else if (repair.kind === 'redrive') await applier.redrive(agent, repair.effects, origin);
      else await applier.redrive(agent, [{ type: 'STOP_PROCESS', graceMs: options.retryPolicy.stopGraceMs }], origin);
    } catch (error) {
      logger.warn({ agentId: agent.id, err: errorMessage(error) }, 'reconcile of agent failed; next round retries');
    }
  }
  const next = agents.length === pageSize ? (agents.at(-1)?.id ?? null) : null;
  // Orphans once per full pass: resources of agents the database does not know (or destroyed).
  let orphansRemoved = 0;
  if (next === null && mayAct()) {
    const held = await driver.list();
    const known = await knownAgentIds(options.pool, held);
    for (const id of held) {
      if (known.has(id) || !mayAct()) continue;
      await applier.removeOrphan(id).then(
        (removed) => (orphansRemoved += removed ? 1 : 0),
        (error: unknown) => logger.warn({ agentId: id, err: errorMessage(error) }, 'orphan not removed'),
      );
    }
  }
  return { checked: agents.length, repaired, orphansRemoved, cursor: next };
}

export interface Reconciler {
  start(): void;
  stop(): Promise<void>;
}

/** Runs `reconcileOnce` every `intervalMs` while `mayAct()` says so (the leader, outside safe mode). */
export function createReconciler(options: ReconcilerOptions & { intervalMs: number; mayAct: () => boolean }): Reconciler {
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let cursor: string | null = null;
  let round: Promise<unknown> = Promise.resolve();
  const loop = () => {
    if (!running) return;
    timer = setTimeout(() => {
      round = (options.mayAct() ? reconcileOnce(options, cursor, () => running && options.mayAct()).then((r) => (cursor = r.cursor)) : Promise.resolve())
        .catch((error: unknown) => options.logger.warn({ err: errorMessage(error) }, 'reconcile round failed'))
        .finally(loop);
    }, options.intervalMs);
    timer.unref();
  };
  return {
    start() {
      running = true;
      loop();
    },
    async stop() {
      running = false;
      clearTimeout(timer);
      await round;
    },
  };
}
