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
    case 'STARTING':
      if (s.awaitingRetry || !stuck) return undefined;
      // The start report was lost (e.g. the provisioner died before the agent said ready).
      if (observed.running && sameFence) return { kind: 'input', input: { type: 'STARTED', ...fence, reason: 'found running by the reconciler' }, why: 'missed start report' };
      return undefined; // the start deadline (a delayed job) settles it
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

export async function reconcileOnce(options: ReconcilerOptions): Promise<ReconcileReport> {
  const { driver, applier, logger } = options;
  const agents = await listLiveAgents(options.pool, options.batchSize ?? 1000);
  let repaired = 0;
  for (const agent of agents) {
    try {
      const observed = await driver.observe(agent.id);
      const repair = repairFor(agent, observed, { ageMs: Date.now() - agent.updatedAt.getTime(), stuckAfterMs: options.stuckAfterMs, retryPolicy: options.retryPolicy });
      if (!repair) continue;
      repaired += 1;
      logger.warn({ agentId: agent.id, state: agent.snapshot.state, repair: repair.kind, why: repair.why }, 'reconciler repairing drift');
      const origin = { actor: 'provisioner/reconciler' };
      if (repair.kind === 'input') await applier.apply(agent.id, repair.input, origin);
      else if (repair.kind === 'redrive') await applier.redrive(agent, repair.effects, origin);
      else await driver.stop(agent.id, options.retryPolicy.stopGraceMs);
    } catch (error) {
      logger.warn({ agentId: agent.id, err: errorMessage(error) }, 'reconcile of agent failed; next round retries');
    }
  }
  // Resources of agents the database does not know (or that are destroyed) are removed.
  const held = await driver.list();
  const known = await knownAgentIds(options.pool, held);
  let orphansRemoved = 0;
  for (const id of held) {
    if (known.has(id)) continue;
    await driver.destroy(id).then(
      () => (orphansRemoved += 1),
      (error: unknown) => logger.warn({ agentId: id, err: errorMessage(error) }, 'orphan not removed'),
    );
  }
  return { checked: agents.length, repaired, orphansRemoved };
}

export interface Reconciler {
  start(): void;
  stop(): Promise<void>;
}

/** Runs `reconcileOnce` every `intervalMs` while `isLeader()` says so. */
export function createReconciler(options: ReconcilerOptions & { intervalMs: number; isLeader: () => boolean }): Reconciler {
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let round: Promise<unknown> = Promise.resolve();
  const loop = () => {
    if (!running) return;
    timer = setTimeout(() => {
      round = (options.isLeader() ? reconcileOnce(options) : Promise.resolve())
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
