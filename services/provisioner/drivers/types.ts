import type { AgentSpec } from '../../../lib/contracts/types.ts';
import type { LeaderFence } from '../../../lib/leader/fence.ts';

/**
 * Allocator drivers: what turns the lifecycle's effects into running agents. Three implement this
 * interface: `local` (child processes), `kubernetes` (a Pod per agent) and `simulated` (instant, for
 * benchmarks). Quick steps (`provision`, `destroy`) are awaited; slow ones (`start`, `stop`) only
 * begin and report their outcome later through `onEvent`, so no Kafka partition waits on them.
 * Every method is idempotent: the provisioner may repeat it after a crash or a redelivery.
 */
export type DriverName = 'local' | 'kubernetes' | 'simulated';

/** What a driver needs to run one agent. */
export interface AgentWorkload {
  readonly agentId: string;
  readonly spec: AgentSpec;
  readonly division: string;
  readonly region: string | null;
  readonly labels: Readonly<Record<string, string>>;
}

/** The start sequence and attempt a report belongs to (the lifecycle rejects stale ones). */
export interface StartFence {
  readonly generation: number;
  readonly attempt: number;
}

/** Reported asynchronously by a driver about one agent. */
export type DriverEvent =
  /** The agent is up (local: it sent its first heartbeat and said ready; Kubernetes: Pod Ready). */
  | (StartFence & { readonly type: 'STARTED'; readonly instanceId: string })
  /** The agent's process or Pod ended (not asked for by `stop`). */
  | (StartFence & { readonly type: 'PROCESS_EXITED'; readonly exitCode: number | null; readonly signal: string | null })
  /** The driver could not launch the agent. */
  | (StartFence & { readonly type: 'DRIVER_FAILED'; readonly reason: string; readonly retryable: boolean })
  /** A `stop` finished: the agent is no longer running (also when it was not running). */
  | { readonly type: 'STOPPED'; readonly exitCode: number | null; readonly signal: string | null };

export type DriverEventListener = (agentId: string, event: DriverEvent) => void;

/** What a driver sees of an agent right now (the reconciler compares it with the desired state). */
export interface ObservedAgent {
  readonly agentId: string;
  /** Resources exist (local: the agent's folder; Kubernetes: the Pod object). */
  readonly provisioned: boolean;
  readonly running: boolean;
  /**
   * It said it is ready, as the driver's STARTED report requires (local: its `ready` message;
   * Kubernetes: the Pod's Ready condition). A process that is alive but still booting is not.
   */
  readonly ready: boolean;
  /** The fence of the running instance, when known. */
  readonly fence: StartFence | null;
  readonly instanceId: string | null;
}

export interface AllocatorDriver {
  readonly name: DriverName;
  /** Ensures the agent's resources exist. Throws an AppError (retryable or not) on failure. */
  provision(workload: AgentWorkload): Promise<void>;
  /**
   * Begins launching the agent for `fence`; resolves once the launch is under way. The outcome
   * arrives later as STARTED, PROCESS_EXITED or DRIVER_FAILED carrying the same fence. Launching
   * while an instance of the same fence runs is a no-op; an instance of an older fence is replaced.
   */
  start(workload: AgentWorkload, fence: StartFence): Promise<void>;
  /**
   * Begins stopping (SIGTERM or Pod deletion; a kill after `graceMs`); STOPPED follows.
   * `leader`: the reconciler's term, for a driver whose resources can refuse a stale one themselves
   * (Kubernetes: a conditional update and delete); the others rely on the Postgres check around the
   * call. A stale term is refused with STALE_FENCE.
   */
  stop(agentId: string, graceMs: number, leader?: LeaderFence): Promise<void>;
  /** Kills whatever runs and removes every resource of the agent; idempotent. `leader`: as for `stop`. */
  destroy(agentId: string, leader?: LeaderFence): Promise<void>;
  observe(agentId: string): Promise<ObservedAgent>;
  /** Agent ids the driver holds resources for (finds orphans). */
  list(): Promise<string[]>;
  /** Releases the driver's own resources. Agents keep running: a restarted provisioner adopts them. */
  close(): Promise<void>;
}
