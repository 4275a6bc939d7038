/**
 * The agent lifecycle as a pure function: `transition(snapshot, input, policy) → result`.
 *
 * No I/O, no clock, no randomness, and it never throws: an input that does not apply is returned as
 * a rejection with a stable code and a reason. The provisioner's I/O layer applies the result:
 *
 * - `ok: true, noop: false`: persist `snapshot` (version-fenced) and, in the SAME transaction, write
 *   one `agent-status` event (`state`, `reason`) and one audit event (`previous → state`, the input,
 *   `reason`). Status and audit are implicit: every accepted, non-noop result produces both, so no
 *   effect has to remember to ask for them. Then apply `effects` in order, through the allocator
 *   driver and BullMQ delayed jobs.
 * - `ok: true, noop: true`: an idempotent repeat; nothing to persist, emit or apply.
 * - `ok: false`: nothing changes. For a Kafka command, publish the rejection (code, reason) on
 *   `agent-status`; for an internal event (a late timer, a late driver report), log it.
 *
 * Inputs are the six commands from `agent-commands` plus internal events produced by the policy
 * check, the allocator driver, the delayed jobs and the heartbeat. Delayed jobs and driver reports
 * are delivered at least once and may arrive late, so they carry the `generation` (start sequences
 * begun so far) and `attempt` (within the sequence) they were created for, and a mismatch is
 * rejected as `STALE_EVENT` instead of acting twice.
 */

// States and commands are the topic contracts' enums: one list, shared with the Avro schemas.
import { AGENT_STATES, AGENT_COMMAND_TYPES } from '../../lib/contracts/types.ts';
import type { AgentCommandType, AgentState } from '../../lib/contracts/types.ts';
export { AGENT_STATES };
export type { AgentState };

/** The heartbeat service's signals travel on agent-commands too, but they are internal events (never answered on agent-status). */
const HEARTBEAT_SIGNALS = ['HEARTBEAT_MISSED', 'HEARTBEAT_RESUMED'] as const;
export type LifecycleCommand = Exclude<AgentCommandType, (typeof HEARTBEAT_SIGNALS)[number]>;
export const LIFECYCLE_COMMANDS: readonly LifecycleCommand[] = AGENT_COMMAND_TYPES.filter((c): c is LifecycleCommand => !(HEARTBEAT_SIGNALS as readonly string[]).includes(c));

export const INTERNAL_EVENTS = [
  'POLICY_ALLOWED',
  'POLICY_DENIED',
  'PROVISIONED',
  'STARTED',
  'STOPPED',
  'DESTROYED',
  'START_TIMEOUT',
  'RETRY_DUE',
  'DRIVER_FAILED',
  'PROCESS_EXITED',
  'HEARTBEAT_MISSED',
  'HEARTBEAT_RESUMED',
] as const;
export type InternalEvent = (typeof INTERNAL_EVENTS)[number];

export type LifecycleInputType = LifecycleCommand | InternalEvent;

/** No way out of these but idempotent repeats. FAILED is an outcome too, but commands can leave it. */
export const TERMINAL_STATES: readonly AgentState[] = ['DESTROYED', 'REJECTED'];

export type RestartMode = 'always' | 'on-failure' | 'never';

/** Per agent (from its spec): what to do when its process dies or stops answering. */
export interface RestartPolicy {
  readonly mode: RestartMode;
  /** Automatic restarts allowed until an operator's START/RESTART resets the count. */
  readonly maxRestarts: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = { mode: 'on-failure', maxRestarts: 3 };

/** Per deployment (from config): start deadlines, retries and backoff. */
export interface RetryPolicy {
  /** How long one start attempt may take to reach RUNNING. */
  readonly startTimeoutMs: number;
  /** Start attempts in one start sequence, the first included (≥ 1). */
  readonly maxStartAttempts: number;
  /** Backoff: `min(maxDelayMs, baseDelayMs × multiplier^(n−1))` after the n-th failure. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly multiplier: number;
  /** Grace given to a process between SIGTERM (or Pod deletion) and a kill. */
  readonly stopGraceMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  startTimeoutMs: 60_000,
  maxStartAttempts: 3,
  baseDelayMs: 1_000,
  maxDelayMs: 60_000,
  multiplier: 2,
  stopGraceMs: 30_000,
};

/** What the provisioner persists per agent (plus its own id/version columns). */
export interface AgentSnapshot {
  readonly state: AgentState;
  /** Why the agent is in `state`; also the reason of the status event. */
  readonly reason: string;
  readonly restartPolicy: RestartPolicy;
  /** Start sequences begun so far; fences timers and driver reports of an earlier sequence. */
  readonly generation: number;
  /** Attempt within the current start sequence, 1-based (0 before the first start). */
  readonly startAttempt: number;
  /** STARTING only: no process is launched, a RETRY_DUE job for `startAttempt` is scheduled. */
  readonly awaitingRetry: boolean;
  /** Automatic restarts used (process exits, RECOVER); reset by START/RESTART commands. */
  readonly restarts: number;
  /** STOPPING only: what follows once the process has stopped. */
  readonly afterStop: 'START' | 'DESTROY' | null;
  /**
   * The running instance (pod name, or host:pid; what its heartbeats carry) as the driver's STARTED
   * reported it; null or absent when unknown. Meaningful in RUNNING and UNHEALTHY only.
   */
  readonly instanceId?: string | null;
}

interface InputBase {
  /** Free text from the producer (a command's reason, a driver's error message). */
  readonly reason?: string;
}

/** Fence carried by delayed jobs and driver reports: the start sequence and attempt they belong to. */
interface Fence {
  readonly generation?: number;
  readonly attempt?: number;
}

export type LifecycleInput =
  | (InputBase & { readonly type: 'INSTANTIATE'; readonly restartPolicy?: RestartPolicy })
  | (InputBase & { readonly type: 'START' | 'STOP' | 'RESTART' | 'DESTROY' | 'RECOVER' })
  | (InputBase & {
      readonly type:
        | 'POLICY_ALLOWED'
        | 'POLICY_DENIED'
        | 'PROVISIONED'
        | 'STOPPED'
        | 'DESTROYED'
        | 'HEARTBEAT_MISSED'
        | 'HEARTBEAT_RESUMED';
    })
  /** The driver could not do what the last effect asked; `retryable: false` skips start retries. */
  | (InputBase & Fence & { readonly type: 'DRIVER_FAILED'; readonly retryable?: boolean })
  /** `instanceId`: the instance that is up, when the driver knows it. */
  | (InputBase & Fence & { readonly type: 'STARTED'; readonly instanceId?: string })
  | (InputBase & Fence & { readonly type: 'PROCESS_EXITED'; readonly exitCode: number | null; readonly signal?: string | null })
  /** Delayed jobs: always fenced. */
  | (InputBase & { readonly type: 'START_TIMEOUT' | 'RETRY_DUE'; readonly generation: number; readonly attempt: number });

/** Effects are data; the I/O layer applies them in order. Drivers must make each one idempotent. */
export type Effect =
  /** Ask SentinelNet (or the local policy); answer with POLICY_ALLOWED / POLICY_DENIED. */
  | { readonly type: 'CHECK_POLICY' }
  /** Ensure the agent's resources exist; answer PROVISIONED or DRIVER_FAILED. */
  | { readonly type: 'PROVISION' }
  /** Launch the process; answer STARTED / PROCESS_EXITED / DRIVER_FAILED carrying the fence. */
  | { readonly type: 'START_PROCESS'; readonly generation: number; readonly attempt: number }
  /** Stop the process (kill after `graceMs`); answer STOPPED (also when nothing was running). */
  | { readonly type: 'STOP_PROCESS'; readonly graceMs: number }
  /** Remove the process and every resource (idempotent, also after a partial provision); answer DESTROYED. */
  | { readonly type: 'DESTROY_RESOURCES' }
  /** Delayed job that delivers START_TIMEOUT with the same fence. */
  | { readonly type: 'SCHEDULE_TIMEOUT'; readonly kind: 'start'; readonly generation: number; readonly attempt: number; readonly delayMs: number }
  /** Delayed job that delivers RETRY_DUE with the same fence. */
  | { readonly type: 'SCHEDULE_RETRY'; readonly generation: number; readonly attempt: number; readonly delayMs: number }
  /** Remove the agent's pending start-timeout and retry jobs (best effort: the fence catches late ones). */
  | { readonly type: 'CANCEL_TIMERS' };

export type RejectionCode =
  /** A command for an agent that does not exist (only INSTANTIATE creates one). */
  | 'UNKNOWN_AGENT'
  /** A command that contradicts the current state. */
  | 'INVALID_TRANSITION'
  /** A command other than an idempotent repeat on DESTROYED or REJECTED. */
  | 'TERMINAL_STATE'
  /** An internal event the current state does not wait for (late or duplicate). */
  | 'UNEXPECTED_EVENT'
  /** An internal event whose fence (generation/attempt) is not the current one. */
  | 'STALE_EVENT'
  /** An input whose payload is malformed (unknown type, bad restart policy, bad fence). */
  | 'INVALID_INPUT'
  /** A persisted snapshot that is not valid (unknown state). */
  | 'INVALID_STATE'
  /** A bug: the machine itself failed; reported rather than thrown. */
  | 'INTERNAL_ERROR';

export interface Rejection {
  readonly code: RejectionCode;
  readonly reason: string;
}

export type TransitionResult =
  | {
      readonly ok: true;
      /** True for an idempotent repeat: no state change, no effects, nothing to emit. */
      readonly noop: boolean;
      readonly previous: AgentState | undefined;
      readonly state: AgentState;
      readonly snapshot: AgentSnapshot;
      readonly effects: readonly Effect[];
      readonly reason: string;
    }
  | { readonly ok: false; readonly rejection: Rejection };

/** Delay before the retry that follows the `attempt`-th failure (1-based), capped by `maxDelayMs`. */
export function nextBackoffMs(attempt: number, policy: RetryPolicy): number {
  const n = Number.isFinite(attempt) && attempt >= 1 ? Math.floor(attempt) : 1;
  const raw = policy.baseDelayMs * policy.multiplier ** (n - 1);
  const capped = Number.isFinite(raw) ? Math.min(policy.maxDelayMs, raw) : policy.maxDelayMs;
  return Math.max(0, Math.round(capped));
}

// ---------------------------------------------------------------------------------------------
// Building blocks

type Handler = (snapshot: AgentSnapshot, input: LifecycleInput, policy: RetryPolicy) => TransitionResult;

function noop(s: AgentSnapshot, reason: string): TransitionResult {
  return { ok: true, noop: true, previous: s.state, state: s.state, snapshot: s, effects: [], reason };
}

function move(
  s: AgentSnapshot,
  state: AgentState,
  patch: Partial<Omit<AgentSnapshot, 'state' | 'reason'>>,
  effects: readonly Effect[],
  reason: string,
): TransitionResult {
  // Sub-state flags only mean something in their own state; clear them everywhere else.
  const snapshot: AgentSnapshot = {
    ...s,
    afterStop: null,
    awaitingRetry: false,
    ...patch,
    state,
    reason,
  };
  return { ok: true, noop: false, previous: s.state, state, snapshot, effects, reason };
}

function reject(code: RejectionCode, reason: string): TransitionResult {
  return { ok: false, rejection: { code, reason } };
}

function withReason(text: string, input: LifecycleInput): string {
  return input.reason !== undefined && input.reason !== '' ? `${text}: ${input.reason}` : text;
}

const stop = (p: RetryPolicy): Effect => ({ type: 'STOP_PROCESS', graceMs: p.stopGraceMs });
const KILL: Effect = { type: 'STOP_PROCESS', graceMs: 0 };
const CANCEL: Effect = { type: 'CANCEL_TIMERS' };

/** Enter STARTING and launch attempt 1 of a new start sequence now. */
function launch(s: AgentSnapshot, p: RetryPolicy, patch: Partial<AgentSnapshot>, reason: string): TransitionResult {
  const generation = s.generation + 1;
  return move(
    s,
    'STARTING',
    { ...patch, generation, startAttempt: 1 },
    [
      { type: 'START_PROCESS', generation, attempt: 1 },
      { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation, attempt: 1, delayMs: p.startTimeoutMs },
    ],
    reason,
  );
}

/** A start attempt failed: retry after backoff while attempts remain, else FAILED. */
function failedAttempt(s: AgentSnapshot, p: RetryPolicy, why: string, first: readonly Effect[], retry = true): TransitionResult {
  const max = Math.max(1, p.maxStartAttempts);
  if (retry && s.startAttempt < max) {
    const attempt = s.startAttempt + 1;
    const delayMs = nextBackoffMs(s.startAttempt, p);
    return move(
      s,
      'STARTING',
      { startAttempt: attempt, awaitingRetry: true },
      [...first, { type: 'SCHEDULE_RETRY', generation: s.generation, attempt, delayMs }],
      `${why}; retrying in ${delayMs} ms (attempt ${attempt} of ${max})`,
    );
  }
  const tail = retry ? `gave up after ${s.startAttempt} of ${max} attempts` : 'not retryable';
  return move(s, 'FAILED', {}, first, `${why}; ${tail}`);
}

/** Undefined fields of a fence match anything (a driver that cannot tell); present ones must match. */
function fenceMatches(s: AgentSnapshot, input: LifecycleInput): boolean {
  if (!('generation' in input) && !('attempt' in input)) return true;
  const f = input as Fence;
  return (f.generation === undefined || f.generation === s.generation) && (f.attempt === undefined || f.attempt === s.startAttempt);
}

function staleReason(s: AgentSnapshot, input: LifecycleInput): string {
  const f = input as Fence;
  return `${input.type} for generation ${String(f.generation)} attempt ${String(f.attempt)} is stale: current is generation ${s.generation} attempt ${s.startAttempt}${s.awaitingRetry ? ' (waiting to retry)' : ''}`;
}

function describeExit(input: LifecycleInput): string {
  if (input.type !== 'PROCESS_EXITED') return input.type;
  const how =
    input.exitCode === null
      ? `process killed${input.signal !== undefined && input.signal !== null ? ` by ${input.signal}` : ''}`
      : `process exited with code ${input.exitCode}`;
  return withReason(how, input);
}

/** RUNNING/UNHEALTHY: the process is gone; restart (after backoff) or settle, per restart policy. */
const onExit: Handler = (s, input, p) => {
  if (!fenceMatches(s, input)) return reject('STALE_EVENT', staleReason(s, input));
  const exitCode = input.type === 'PROCESS_EXITED' ? input.exitCode : null;
  const failure = exitCode !== 0;
  const { mode, maxRestarts } = s.restartPolicy;
  const what = describeExit(input);
  const wanted = mode === 'always' || (mode === 'on-failure' && failure);
  if (!wanted) {
    return failure
      ? move(s, 'FAILED', {}, [], `${what}; restart policy ${mode}`)
      : move(s, 'STOPPED', {}, [], `${what}; restart policy ${mode}: not restarted`);
  }
  if (s.restarts >= maxRestarts) return move(s, 'FAILED', {}, [], `${what}; restart limit reached (${maxRestarts})`);
  const restarts = s.restarts + 1;
  const generation = s.generation + 1;
  const delayMs = nextBackoffMs(restarts, p);
  return move(
    s,
    'STARTING',
    { generation, startAttempt: 1, awaitingRetry: true, restarts },
    [{ type: 'SCHEDULE_RETRY', generation, attempt: 1, delayMs }],
    `${what}; restarting in ${delayMs} ms (restart ${restarts} of ${maxRestarts})`,
  );
};

/** RUNNING/UNHEALTHY + RECOVER: the process stopped answering; restart it or give up, per policy. */
const onRecover: Handler = (s, input, p) => {
  const { mode, maxRestarts } = s.restartPolicy;
  const what = withReason('recover requested', input);
  if (mode === 'never') return move(s, 'FAILED', {}, [stop(p)], `${what}; restart policy never`);
  if (s.restarts >= maxRestarts) return move(s, 'FAILED', {}, [stop(p)], `${what}; restart limit reached (${maxRestarts})`);
  const restarts = s.restarts + 1;
  return move(s, 'STOPPING', { afterStop: 'START', restarts }, [stop(p)], `${what}; restarting (restart ${restarts} of ${maxRestarts})`);
};

/** STOPPING: the process is gone; go where the pending intent says. */
const onStopped: Handler = (s, input, p) => {
  if (s.afterStop === 'START') return launch(s, p, {}, withReason('stopped; starting again', input));
  if (s.afterStop === 'DESTROY') return move(s, 'DESTROYING', {}, [{ type: 'DESTROY_RESOURCES' }], 'stopped; destroying');
  return move(s, 'STOPPED', {}, [], input.type === 'PROCESS_EXITED' ? `stopped (${describeExit(input)})` : 'stopped');
};

const repeatInstantiate: Handler = (s) => noop(s, `INSTANTIATE repeated: agent already exists (${s.state})`);
const ignoreRecover: Handler = (s) => noop(s, `RECOVER ignored: agent is ${s.state}, not expected to be running`);
const already =
  (why: string): Handler =>
  (s) =>
    noop(s, why);
const userStart =
  (what: string): Handler =>
  (s, input, p) =>
    launch(s, p, { restarts: 0 }, withReason(what, input));

// ---------------------------------------------------------------------------------------------
// The transition table: state → the inputs it accepts. Anything missing is rejected:
// commands with INVALID_TRANSITION (TERMINAL_STATE on DESTROYED/REJECTED, UNKNOWN_AGENT with no
// agent), internal events with UNEXPECTED_EVENT.
//
// Idempotency decisions (a no-op is an accepted input with no state change and no effects):
// - INSTANTIATE on an existing agent, in any state, is a no-op: ingest assigns the agentId
//   deterministically from the request, so it can only be a redelivery of the creating request.
// - A command whose intent is already met or under way is a no-op: START/RESTART while PENDING,
//   PROVISIONING or STARTING (it will run), START on RUNNING/UNHEALTHY, STOP on STOPPED, STOP on
//   FAILED (nothing runs, like `systemctl stop` on a failed unit; it stays FAILED), DESTROY on
//   DESTROYING/DESTROYED, and repeats while STOPPING.
// - RECOVER is produced by the heartbeat sweeper and races with intentional stops, so outside
//   RUNNING/UNHEALTHY it is ignored (a no-op), never rejected back to the Kernel.
// - A late or duplicate internal event is rejected (UNEXPECTED_EVENT/STALE_EVENT) so it is logged;
//   it changes nothing either way.
// Other decisions:
// - STOP before anything runs (PENDING, PROVISIONING) is rejected: DESTROY cancels instead.
// - While STOPPING, START/RESTART queue a start after the stop, DESTROY queues a destroy, and STOP
//   cancels a queued start; nothing but DESTROY can override a queued destroy.
// - DESTROY of a process (STARTING, RUNNING, UNHEALTHY) stops it gracefully first; from PENDING
//   nothing exists yet so it is DESTROYED at once; otherwise DESTROYING cleans up.
// - FAILED accepts START/RESTART as a retry from scratch (policy check again, then provision, which
//   drivers make idempotent), and DESTROY for cleanup. DESTROYED and REJECTED accept only the
//   no-ops above (REJECTED has nothing to destroy, so DESTROY there is TERMINAL_STATE too).
// - Automatic restarts (process exit, RECOVER) count against `maxRestarts`; operator START/RESTART
//   reset the count. A start that does not reach RUNNING in time is killed and retried with
//   backoff up to `maxStartAttempts`, then FAILED with the reason.

/** What a started agent (RUNNING or UNHEALTHY) answers alike. */
const STARTED: Readonly<Partial<Record<LifecycleInputType, Handler>>> = {
  INSTANTIATE: repeatInstantiate,
  STOP: (s, i, p) => move(s, 'STOPPING', {}, [stop(p)], withReason('stop requested', i)),
  RESTART: (s, i, p) => move(s, 'STOPPING', { afterStop: 'START', restarts: 0 }, [stop(p)], withReason('restart requested', i)),
  DESTROY: (s, i, p) => move(s, 'STOPPING', { afterStop: 'DESTROY' }, [stop(p)], withReason('destroy requested; stopping first', i)),
  RECOVER: onRecover,
  PROCESS_EXITED: onExit,
};

/** START or RESTART while STOPPING: start again once stopped, unless it is stopping to be destroyed. */
const startOnceStopped =
  (command: 'START' | 'RESTART'): Handler =>
  (s, i) =>
    s.afterStop === null
      ? move(s, 'STOPPING', { afterStop: 'START', restarts: 0 }, [], withReason(`${command.toLowerCase()} requested; starting once stopped`, i))
      : s.afterStop === 'START'
        ? noop(s, `${command}: agent already restarts once stopped`)
        : reject('INVALID_TRANSITION', `${command}: agent is being stopped for destruction`);

const TABLE: Readonly<Record<AgentState, Readonly<Partial<Record<LifecycleInputType, Handler>>>>> = {
  PENDING: {
    INSTANTIATE: repeatInstantiate,
    START: already('START: agent is PENDING and starts once provisioned'),
    RESTART: already('RESTART: agent is PENDING and starts once provisioned'),
    DESTROY: (s, i) => move(s, 'DESTROYED', {}, [], withReason('destroyed before provisioning', i)),
    RECOVER: ignoreRecover,
    POLICY_ALLOWED: (s, i) => move(s, 'PROVISIONING', {}, [{ type: 'PROVISION' }], withReason('policy allowed; provisioning', i)),
    POLICY_DENIED: (s, i) => move(s, 'REJECTED', {}, [], `policy denied: ${i.reason ?? 'no reason given'}`),
    // The policy point could not answer: fail closed (nothing provisioned); START/RESTART re-ask.
    DRIVER_FAILED: (s, i) => move(s, 'FAILED', {}, [], `policy check failed: ${i.reason ?? 'no reason given'}`),
  },
  PROVISIONING: {
    INSTANTIATE: repeatInstantiate,
    START: already('START: agent is PROVISIONING and starts once provisioned'),
    RESTART: already('RESTART: agent is PROVISIONING and starts once provisioned'),
    DESTROY: (s, i) => move(s, 'DESTROYING', {}, [{ type: 'DESTROY_RESOURCES' }], withReason('destroy requested', i)),
    RECOVER: ignoreRecover,
    PROVISIONED: (s, _i, p) => launch(s, p, {}, `provisioned; starting (attempt 1 of ${Math.max(1, p.maxStartAttempts)})`),
    DRIVER_FAILED: (s, i) => move(s, 'FAILED', {}, [], `provisioning failed: ${i.reason ?? 'no reason given'}`),
  },
  STARTING: {
    INSTANTIATE: repeatInstantiate,
    START: already('START: agent is already STARTING'),
    RESTART: already('RESTART: agent is already STARTING'),
    STOP: (s, i, p) => move(s, 'STOPPING', {}, [CANCEL, stop(p)], withReason('stop requested', i)),
    DESTROY: (s, i, p) => move(s, 'STOPPING', { afterStop: 'DESTROY' }, [CANCEL, stop(p)], withReason('destroy requested; stopping first', i)),
    RECOVER: ignoreRecover,
    STARTED: (s, i) => {
      if (s.awaitingRetry || !fenceMatches(s, i)) return reject('STALE_EVENT', staleReason(s, i));
      const instanceId = i.type === 'STARTED' && typeof i.instanceId === 'string' && i.instanceId !== '' ? i.instanceId : null;
      return move(s, 'RUNNING', { instanceId }, [CANCEL], withReason(`running (attempt ${s.startAttempt})`, i));
    },
    START_TIMEOUT: (s, i, p) => {
      if (s.awaitingRetry || !fenceMatches(s, i)) return reject('STALE_EVENT', staleReason(s, i));
      return failedAttempt(s, p, `start attempt ${s.startAttempt} did not reach RUNNING within ${p.startTimeoutMs} ms`, [KILL]);
    },
    RETRY_DUE: (s, i, p) => {
      if (!s.awaitingRetry || !fenceMatches(s, i)) return reject('STALE_EVENT', staleReason(s, i));
      return move(
        s,
        'STARTING',
        {},
        [
          { type: 'START_PROCESS', generation: s.generation, attempt: s.startAttempt },
          { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: s.generation, attempt: s.startAttempt, delayMs: p.startTimeoutMs },
        ],
        `starting (attempt ${s.startAttempt} of ${Math.max(1, p.maxStartAttempts)})`,
      );
    },
    PROCESS_EXITED: (s, i, p) => {
      // While waiting to retry, an exit is the killed attempt's: expected, nothing to do.
      if (s.awaitingRetry || !fenceMatches(s, i)) return reject('STALE_EVENT', staleReason(s, i));
      return failedAttempt(s, p, `${describeExit(i)} during start attempt ${s.startAttempt}`, [CANCEL]);
    },
    DRIVER_FAILED: (s, i, p) => {
      if (!fenceMatches(s, i)) return reject('STALE_EVENT', staleReason(s, i));
      const why = `start attempt ${s.startAttempt} failed: ${i.reason ?? 'no reason given'}`;
      // Waiting to retry, the failing call was the kill of the previous attempt: starting another
      // process next to one that may live on is unsafe, so give up.
      if (s.awaitingRetry) return move(s, 'FAILED', {}, [CANCEL], `${why}; could not stop the previous attempt`);
      const retryable = i.type === 'DRIVER_FAILED' ? i.retryable !== false : true;
      return failedAttempt(s, p, why, [CANCEL, KILL], retryable);
    },
  },
  RUNNING: {
    ...STARTED,
    START: already('START: agent is already RUNNING'),
    HEARTBEAT_MISSED: (s, i) => move(s, 'UNHEALTHY', {}, [], withReason('heartbeat missed', i)),
  },
  UNHEALTHY: {
    ...STARTED,
    START: already('START: agent is already started (UNHEALTHY; RESTART or RECOVER restarts it)'),
    HEARTBEAT_RESUMED: (s, i) => move(s, 'RUNNING', {}, [], withReason('heartbeat resumed', i)),
  },
  STOPPING: {
    INSTANTIATE: repeatInstantiate,
    START: startOnceStopped('START'),
    RESTART: startOnceStopped('RESTART'),
    STOP: (s, i) =>
      s.afterStop === null
        ? noop(s, 'STOP: agent is already STOPPING')
        : s.afterStop === 'START'
          ? move(s, 'STOPPING', { afterStop: null }, [], withReason('stop requested; pending start cancelled', i))
          : reject('INVALID_TRANSITION', 'STOP: agent is being stopped for destruction; it cannot be kept'),
    DESTROY: (s, i) =>
      s.afterStop === 'DESTROY'
        ? noop(s, 'DESTROY: agent is already stopping for destruction')
        : move(s, 'STOPPING', { afterStop: 'DESTROY' }, [], withReason('destroy requested; destroying once stopped', i)),
    RECOVER: ignoreRecover,
    STOPPED: onStopped,
    // Drivers may report the end of a stopped process as an exit: the stop is done all the same.
    PROCESS_EXITED: onStopped,
    DRIVER_FAILED: (s, i) =>
      s.afterStop === 'DESTROY'
        ? move(s, 'DESTROYING', {}, [{ type: 'DESTROY_RESOURCES' }], `stop failed (${i.reason ?? 'no reason given'}); destroying anyway`)
        : move(s, 'FAILED', {}, [], `stop failed: ${i.reason ?? 'no reason given'}`),
  },
  STOPPED: {
    INSTANTIATE: repeatInstantiate,
    START: userStart('start requested'),
    RESTART: userStart('restart requested'),
    STOP: already('STOP: agent is already STOPPED'),
    DESTROY: (s, i) => move(s, 'DESTROYING', {}, [{ type: 'DESTROY_RESOURCES' }], withReason('destroy requested', i)),
    RECOVER: ignoreRecover,
  },
  DESTROYING: {
    INSTANTIATE: repeatInstantiate,
    DESTROY: already('DESTROY: agent is already DESTROYING'),
    RECOVER: ignoreRecover,
    DESTROYED: (s) => move(s, 'DESTROYED', {}, [], 'destroyed'),
    DRIVER_FAILED: (s, i) => move(s, 'FAILED', {}, [], `destroy failed: ${i.reason ?? 'no reason given'}; DESTROY again to retry`),
  },
  DESTROYED: {
    INSTANTIATE: repeatInstantiate,
    DESTROY: already('DESTROY: agent is already DESTROYED'),
    RECOVER: ignoreRecover,
  },
  REJECTED: {
    INSTANTIATE: repeatInstantiate,
    RECOVER: ignoreRecover,
  },
  FAILED: {
    INSTANTIATE: repeatInstantiate,
    START: (s, i) => move(s, 'PENDING', { restarts: 0, startAttempt: 0 }, [{ type: 'CHECK_POLICY' }], withReason('start requested after failure; checking policy', i)),
    RESTART: (s, i) => move(s, 'PENDING', { restarts: 0, startAttempt: 0 }, [{ type: 'CHECK_POLICY' }], withReason('restart requested after failure; checking policy', i)),
    STOP: already('STOP: agent is FAILED, nothing runs'),
    DESTROY: (s, i) => move(s, 'DESTROYING', {}, [{ type: 'DESTROY_RESOURCES' }], withReason('destroy requested', i)),
    RECOVER: ignoreRecover,
  },
};

/** Why a command is refused where the generic "not allowed while <state>" would not help. */
const REFUSALS: Readonly<Partial<Record<AgentState, Readonly<Partial<Record<LifecycleCommand, string>>>>>> = {
  PENDING: { STOP: 'nothing runs yet; DESTROY cancels it' },
  PROVISIONING: { STOP: 'nothing runs yet; DESTROY cancels it' },
  DESTROYING: { START: 'agent is being destroyed', RESTART: 'agent is being destroyed', STOP: 'agent is being destroyed' },
};

/** The table as data: which inputs each state accepts (everything else is rejected). */
export const ALLOWED_INPUTS: Readonly<Record<AgentState, readonly LifecycleInputType[]>> = Object.freeze(
  Object.fromEntries(AGENT_STATES.map((state) => [state, Object.freeze(Object.keys(TABLE[state]) as LifecycleInputType[])])) as unknown as Record<
    AgentState,
    readonly LifecycleInputType[]
  >,
);

// ---------------------------------------------------------------------------------------------
// Entry point

const COMMAND_SET: ReadonlySet<string> = new Set<string>(LIFECYCLE_COMMANDS);
const INPUT_SET: ReadonlySet<string> = new Set<string>([...LIFECYCLE_COMMANDS, ...INTERNAL_EVENTS]);
const STATE_SET: ReadonlySet<string> = new Set<string>(AGENT_STATES);
const MODES: ReadonlySet<string> = new Set<RestartMode>(['always', 'on-failure', 'never']);

export function isLifecycleCommand(type: string): type is LifecycleCommand {
  return COMMAND_SET.has(type);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

/** Payload checks for inputs decoded from the wire, where the types can lie. */
function inputProblem(input: LifecycleInput): string | undefined {
  if (input.type === 'INSTANTIATE' && input.restartPolicy !== undefined) {
    const rp: unknown = input.restartPolicy;
    const r = (typeof rp === 'object' && rp !== null ? rp : {}) as Record<string, unknown>;
    if (typeof r.mode !== 'string' || !MODES.has(r.mode)) return `restartPolicy.mode must be one of always, on-failure, never`;
    if (!isCount(r.maxRestarts)) return 'restartPolicy.maxRestarts must be a non-negative integer';
  }
  if ('generation' in input && input.generation !== undefined && !isCount(input.generation)) return 'generation must be a non-negative integer';
  if ('attempt' in input && input.attempt !== undefined && !isCount(input.attempt)) return 'attempt must be a non-negative integer';
  if ((input.type === 'START_TIMEOUT' || input.type === 'RETRY_DUE') && (input.generation === undefined || input.attempt === undefined)) {
    return `${input.type} must carry generation and attempt`;
  }
  return undefined;
}

/**
 * Apply one input to an agent's snapshot (`undefined`: no such agent yet). Never throws.
 * `policy` is the deployment's retry policy; the agent's restart policy lives in its snapshot.
 */
export function transition(current: AgentSnapshot | undefined, input: LifecycleInput, policy: RetryPolicy = DEFAULT_RETRY_POLICY): TransitionResult {
  try {
    const type: unknown = (input as { type?: unknown } | null | undefined)?.type;
    if (typeof type !== 'string' || !INPUT_SET.has(type)) return reject('INVALID_INPUT', `unknown lifecycle input ${JSON.stringify(type) ?? 'undefined'}`);
    const problem = inputProblem(input);
    if (problem !== undefined) return reject('INVALID_INPUT', `${input.type}: ${problem}`);

    if (current === undefined) {
      if (input.type !== 'INSTANTIATE') return reject('UNKNOWN_AGENT', `${input.type}: no such agent; only INSTANTIATE creates one`);
      const snapshot: AgentSnapshot = {
        state: 'PENDING',
        reason: withReason('instantiate requested; checking policy', input),
        restartPolicy: input.restartPolicy ?? DEFAULT_RESTART_POLICY,
        generation: 0,
        startAttempt: 0,
        awaitingRetry: false,
        restarts: 0,
        afterStop: null,
      };
      return { ok: true, noop: false, previous: undefined, state: 'PENDING', snapshot, effects: [{ type: 'CHECK_POLICY' }], reason: snapshot.reason };
    }

    if (!STATE_SET.has(current.state)) return reject('INVALID_STATE', `stored state ${JSON.stringify(current.state)} is not a lifecycle state`);
    const handler = TABLE[current.state][input.type];
    if (handler !== undefined) return handler(current, input, policy);
    if (!isLifecycleCommand(input.type)) return reject('UNEXPECTED_EVENT', `${input.type} is not expected while ${current.state}`);
    if (TERMINAL_STATES.includes(current.state)) {
      return reject('TERMINAL_STATE', `${input.type}: agent is ${current.state} (${current.reason}); nothing can change it`);
    }
    const why = REFUSALS[current.state]?.[input.type];
    return reject('INVALID_TRANSITION', `${input.type} is not allowed while ${current.state}${why === undefined ? '' : `: ${why}`}`);
  } catch (error) {
    return reject('INTERNAL_ERROR', `lifecycle failed on ${String((input as { type?: unknown } | undefined)?.type)}: ${error instanceof Error ? error.message : String(error)}`);
  }
}
