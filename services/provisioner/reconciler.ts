import type { Pool } from '../../lib/db/pool.ts';
import { errorMessage } from '../../lib/errors.ts';
import { isStaleFence, type LeaderFence } from '../../lib/leader/fence.ts';
import type { Logger } from '../../lib/logger.ts';
import type { LifecycleApplier } from './apply.ts';
import type { AllocatorDriver, ObservedAgent } from './drivers/types.ts';
import type { Effect, LifecycleInput, RetryPolicy } from './lifecycle.ts';
import { knownAgentIds, listLiveAgents, type AgentRecord } from './store.ts';

/**
 * Who may repair right now: the leader's current term (its fence), or null (not the leader, safe
 * mode, shutting down). Asked before each repair, and the fence it gives travels with the repair to
 * where it happens, so a leader that stalls after asking is refused there (STALE_FENCE).
 */
export type Authority = () => LeaderFence | null;

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
      // The start report was lost (e.g. the provisioner died after the agent said ready). Only a
      // ready agent: one still booting (50 processes starting at once on 2 cores take longer than
      // the stuck threshold) would be declared RUNNING before its first heartbeat, and lapse.
      if (observed.running && observed.ready && sameFence) {
        const instance = observed.instanceId !== null ? { instanceId: observed.instanceId } : {};
        return { kind: 'input', input: { type: 'STARTED', ...fence, ...instance, reason: 'found running by the reconciler' }, why: 'missed start report' };
      }
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
  /** A repair was refused as STALE_FENCE: a newer leader term exists; the round ended there. */
  readonly deposed: boolean;
}

/**
 * One round over one page of agents (by id, carrying on from `cursor`), so every agent is visited
 * in turn however many there are. `authority` is asked before each repair: leadership can end, and
 * safe mode begin, in the middle of a round. A repair refused as STALE_FENCE ends the round (this
 * process is no longer the leader, whatever it believed).
 */
export async function reconcileOnce(options: ReconcilerOptions, cursor: string | null, authority: Authority): Promise<ReconcileRound> {
  const { driver, applier, logger } = options;
  const pageSize = options.batchSize ?? 500;
  const agents = await listLiveAgents(options.pool, cursor, pageSize);
  let repaired = 0;
  let deposed = false;
  const refused = (agentId: string, error: unknown): boolean => {
    if (!isStaleFence(error)) return false;
    deposed = true;
    logger.warn({ agentId, err: errorMessage(error) }, 'repair refused: a newer leader term began; ending the round');
    return true;
  };
  for (const agent of agents) {
    if (deposed || authority() === null) break;
    try {
      const observed = await driver.observe(agent.id);
      const repair = repairFor(agent, observed, { ageMs: agent.ageMs, stuckAfterMs: options.stuckAfterMs, retryPolicy: options.retryPolicy });
      const fence = repair ? authority() : null;
      if (!repair || fence === null) continue;
      logger.warn({ agentId: agent.id, state: agent.snapshot.state, repair: repair.kind, why: repair.why, fencingToken: fence.token }, 'reconciler repairing drift');
      const origin = { actor: 'provisioner/reconciler', fence };
      if (repair.kind === 'input') await applier.apply(agent.id, repair.input, origin);
      else if (repair.kind === 'redrive') await applier.redrive(agent, repair.effects, origin);
      else await applier.redrive(agent, [{ type: 'STOP_PROCESS', graceMs: options.retryPolicy.stopGraceMs }], origin);
      repaired += 1;
    } catch (error) {
      if (!refused(agent.id, error)) logger.warn({ agentId: agent.id, err: errorMessage(error) }, 'reconcile of agent failed; next round retries');
    }
  }
  const next = agents.length === pageSize ? (agents.at(-1)?.id ?? null) : null;
  // Orphans once per full pass: resources of agents the database does not know (or destroyed).
  let orphansRemoved = 0;
  if (next === null && !deposed && authority() !== null) {
    const held = await driver.list();
    const known = await knownAgentIds(options.pool, held);
    for (const id of held) {
      const fence = known.has(id) || deposed ? null : authority();
      if (fence === null) continue;
      await applier.removeOrphan(id, fence).then(
        (removed) => (orphansRemoved += removed ? 1 : 0),
        (error: unknown) => {
          if (!refused(id, error)) logger.warn({ agentId: id, err: errorMessage(error) }, 'orphan not removed');
        },
      );
    }
  }
  return { checked: agents.length, repaired, orphansRemoved, cursor: deposed ? cursor : next, deposed };
}

export interface Reconciler {
  start(): void;
  stop(): Promise<void>;
}

/** Runs `reconcileOnce` every `intervalMs` while `authority()` gives a fence (the leader, outside safe mode). */
export function createReconciler(options: ReconcilerOptions & { intervalMs: number; authority: Authority }): Reconciler {
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let cursor: string | null = null;
  let round: Promise<unknown> = Promise.resolve();
  const loop = () => {
    if (!running) return;
    timer = setTimeout(() => {
      round = (options.authority() !== null ? reconcileOnce(options, cursor, () => (running ? options.authority() : null)).then((r) => (cursor = r.cursor)) : Promise.resolve())
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
