/**
 * Leader election on a Kubernetes `coordination.k8s.io/v1` Lease: the implementation used in a
 * cluster (the Postgres lease is the default elsewhere). The protocol is client-go's:
 *
 * - every `renewIntervalMs` each candidate reads the Lease; a missing Lease is created with itself
 *   as holder; a Lease held by someone else is taken only when it is free (`holderIdentity` empty)
 *   or EXPIRED: unchanged (same `resourceVersion`) for `leaseDurationSeconds` of THIS process's
 *   clock since it first saw that version, so skewed clocks between members do not matter;
 * - every write is a `replace` carrying the `resourceVersion` read: two candidates racing for the
 *   same Lease cannot both win (the loser gets 409 Conflict);
 * - `leaseTransitions` is the fencing token: +1 whenever a new term begins (another holder, or this
 *   identity again after a restart); a created Lease starts at 1, like the Postgres lease's token;
 * - a leader that cannot renew steps down `leaseDurationMs − renewIntervalMs` after its last
 *   successful renewal, before any other candidate can consider the Lease expired;
 * - `stop()` releases a held Lease (empty holder, 1 s duration) so a successor takes over at once.
 *
 * The API is taken through `LeaseApi`, the three CoordinationV1Api calls used: `CoordinationV1Api`
 * of @kubernetes/client-node satisfies it (`createKubernetesLeaseApi`), and tests pass a fake.
 */
import { types } from 'node:util';
import { errorMessage, isAppError, permanentError, retryableError, type AppError } from '../errors.ts';
import { describeKubernetesFailure, kubernetesFailure, kubernetesHttpStatus } from '../kubernetes-status.ts';
import type { Logger } from '../logger.ts';
import type { LeaderFence } from './fence.ts';
import { DEFAULT_LEASE_TIMING, type LeaderElector, type LeadershipState, type LeaseTiming } from './types.ts';

export interface LeaseSpecObject {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: Date;
  renewTime?: Date;
  leaseTransitions?: number;
}

export interface LeaseObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
  spec?: LeaseSpecObject;
}

/** The CoordinationV1Api calls the elector makes (object-parameter style of @kubernetes/client-node 1.x/2.x). */
export interface LeaseApi {
  readNamespacedLease(param: { name: string; namespace: string }): Promise<LeaseObject>;
  createNamespacedLease(param: { namespace: string; body: LeaseObject }): Promise<LeaseObject>;
  replaceNamespacedLease(param: { name: string; namespace: string; body: LeaseObject }): Promise<LeaseObject>;
}

/** CoordinationV1Api from the default kubeconfig (in-cluster service account, KUBECONFIG or ~/.kube/config). */
export async function createKubernetesLeaseApi(): Promise<LeaseApi> {
  // Loaded on demand: the client is ESM-only and large, and only this elector needs it.
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromDefault();
  const api: LeaseApi = config.makeApiClient(k8s.CoordinationV1Api);
  return api;
}

/**
 * A Lease time: the API server wants RFC 3339 with exactly six fractional digits (MicroTime), and a
 * Date's JSON form has three (JSON.stringify calls toISOString through toJSON).
 */
export class MicroTime extends Date {
  override toISOString(): string {
    return `${super.toISOString().slice(0, -1)}000Z`;
  }
}

/** A Lease time as read back (a Date, or the raw string the client leaves MicroTime fields as) → MicroTime. */
function asMicroTime(value: unknown): MicroTime | undefined {
  // types.isDate, not instanceof: a Date from another realm is still a Date.
  const millis = types.isDate(value) ? value.getTime() : typeof value === 'string' ? Date.parse(value) : Number.NaN;
  return Number.isNaN(millis) ? undefined : new MicroTime(millis);
}

export interface KubernetesLeaseOptions {
  /** The API (or how to get it); default: CoordinationV1Api from the default kubeconfig. */
  readonly api?: LeaseApi | (() => Promise<LeaseApi>);
  readonly namespace: string;
  /** The Lease's name, one per singleton (e.g. `agent-manager-provisioner-reconciler`). */
  readonly name: string;
  /** This candidate (its Pod name). */
  readonly identity: string;
  readonly logger: Logger;
  readonly timing?: Partial<LeaseTiming>;
  /** Injectable clock (ms). */
  readonly now?: () => number;
  /**
   * Stores a new term's token where side effects check it (`recordTerm` of ./fence.ts into
   * Postgres); the term leads only once it answered true. Unset: `fence()` is not checkable.
   */
  readonly recordTerm?: (fence: LeaderFence) => Promise<boolean>;
  /** The lease's name in `fence()` (the `leases` row `recordTerm` writes). Default: `name`. */
  readonly fenceLease?: string;
}

const statusOf = kubernetesHttpStatus;

/**
 * The API server's own words: the Status reason and message (the client's message is a generic
 * "Unknown API Status Code!" with the Status buried in a JSON dump of the body and headers).
 */
function leaseError(error: unknown, what: string): AppError {
  if (isAppError(error)) return error;
  const failure = kubernetesFailure(error);
  const status = failure.httpStatus;
  const message = `${what}: ${status === undefined ? 'no answer' : `HTTP ${status}`}: ${describeKubernetesFailure(failure)}`;
  const context = { status: status ?? null, reason: failure.reason ?? null };
  if (status === 401 || status === 403 || status === 400 || status === 422) return permanentError('LEASE_API_REJECTED', message, error, context);
  return retryableError('LEASE_API_UNAVAILABLE', message, error, context);
}

export function createKubernetesLease(options: KubernetesLeaseOptions): LeaderElector {
  const timing: LeaseTiming = { ...DEFAULT_LEASE_TIMING, ...options.timing };
  if (!(timing.renewIntervalMs > 0 && timing.leaseDurationMs > timing.renewIntervalMs)) {
    throw permanentError('CONFIG_INVALID', `lease timing: renewIntervalMs (${timing.renewIntervalMs}) must be positive and below leaseDurationMs (${timing.leaseDurationMs})`);
  }
  const { namespace, name, identity } = options;
  const fenceLease = options.fenceLease ?? name;
  const now = options.now ?? Date.now;
  const durationSeconds = Math.max(1, Math.ceil(timing.leaseDurationMs / 1000));
  /** How long a leader keeps leading without a successful renewal. */
  const renewDeadlineMs = timing.leaseDurationMs - timing.renewIntervalMs;
  /** No API call may hold a round longer than this. */
  const callTimeoutMs = Math.max(1_000, timing.renewIntervalMs);
  const log = options.logger.child({ component: 'leader', lease: `${namespace}/${name}`, identity });
  const apiSource = options.api ?? createKubernetesLeaseApi;
  let apiPromise: Promise<LeaseApi> | undefined;

  const listeners: Array<(state: LeadershipState) => void> = [];
  let current: LeadershipState = { leader: false, fencingToken: null };
  let running = false;
  let timer: NodeJS.Timeout | undefined;
  let stepDownTimer: NodeJS.Timeout | undefined;
  let round: Promise<void> = Promise.resolve();
  /** The version of the Lease last seen, and when (this clock) it was first seen. */
  let observed: { resourceVersion: string; at: number } | null = null;

  function api(): Promise<LeaseApi> {
    if (!apiPromise) {
      apiPromise = typeof apiSource === 'function' ? apiSource() : Promise.resolve(apiSource);
      apiPromise.catch(() => {
        apiPromise = undefined;
      });
    }
    return apiPromise;
  }

  async function call<T>(what: string, fn: (client: LeaseApi) => Promise<T>): Promise<T> {
    let timeout: NodeJS.Timeout | undefined;
    try {
      const client = await api();
      return await Promise.race([
        fn(client),
        new Promise<never>((_, reject) => {
          timeout = setTimeout(() => reject(retryableError('LEASE_API_TIMEOUT', `${what}: no answer within ${callTimeoutMs} ms`)), callTimeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timeout);
    }
  }

  function set(next: LeadershipState): void {
    if (next.leader === current.leader && next.fencingToken === current.fencingToken) return;
    current = next;
    log.info({ leader: next.leader, fencingToken: next.fencingToken }, next.leader ? 'became leader' : 'not leader');
    for (const listener of listeners) {
      try {
        listener(next);
      } catch (error) {
        log.error({ err: errorMessage(error) }, 'leadership listener threw');
      }
    }
  }

  function stepDown(reason: string): void {
    clearTimeout(stepDownTimer);
    stepDownTimer = undefined;
    if (current.leader) log[reason === 'stopping' ? 'info' : 'warn']({ reason }, 'stepping down');
    set({ leader: false, fencingToken: null });
  }

  /** `since`: when the successful write was SENT (the Lease can be no fresher than that). */
  function renewed(token: number, since: number): void {
    clearTimeout(stepDownTimer);
    const delay = Math.max(0, since + renewDeadlineMs - now());
    stepDownTimer = setTimeout(() => stepDown(`no successful renewal for ${renewDeadlineMs} ms`), delay);
    stepDownTimer.unref();
    set({ leader: true, fencingToken: token });
  }

  function spec(transitions: number, acquireTime: Date | undefined, at: number): LeaseSpecObject {
    return {
      holderIdentity: identity,
      leaseDurationSeconds: durationSeconds,
      acquireTime: acquireTime ?? new MicroTime(at),
      renewTime: new MicroTime(at),
      leaseTransitions: transitions,
    };
  }

  /** A new term leads only once `recordTerm` stored its token (where side effects check it). */
  async function recorded(token: number): Promise<boolean> {
    if (!options.recordTerm) return true;
    try {
      if (await options.recordTerm({ lease: fenceLease, token })) return true;
      log.warn({ fencingToken: token }, 'a newer term is recorded already; not leading');
    } catch (error) {
      log.warn({ fencingToken: token, err: errorMessage(error) }, 'could not record the new term; not leading (the next round begins another)');
    }
    stepDown('term not recorded');
    return false;
  }

  /** One read and, when due, one write. Returns 'conflict' when another writer got in between. */
  async function attempt(): Promise<'done' | 'conflict'> {
    const at = now();
    let lease: LeaseObject | null;
    try {
      lease = await call('reading the lease', (client) => client.readNamespacedLease({ name, namespace }));
    } catch (error) {
      if (statusOf(error) !== 404) throw leaseError(error, 'reading the lease');
      lease = null;
    }

    if (lease === null) {
      try {
        await call('creating the lease', (client) =>
          client.createNamespacedLease({
            namespace,
            body: { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace }, spec: spec(1, undefined, at) },
          }),
        );
      } catch (error) {
        if (statusOf(error) === 409) return 'conflict';
        throw leaseError(error, 'creating the lease');
      }
      if (!(await recorded(1))) return 'done';
      renewed(1, at);
      return 'done';
    }

    const resourceVersion = lease.metadata?.resourceVersion ?? '';
    if (observed === null || observed.resourceVersion !== resourceVersion) observed = { resourceVersion, at };
    const holder = lease.spec?.holderIdentity ?? '';
    const transitions = lease.spec?.leaseTransitions ?? 0;
    const durationMs = (lease.spec?.leaseDurationSeconds ?? durationSeconds) * 1000;
    const renewal = holder === identity && current.leader && current.fencingToken === transitions;
    const free = holder === '' || at >= observed.at + durationMs;
    if (!renewal && holder !== identity && !free) {
      if (current.leader) stepDown(`the lease is held by ${holder}`);
      return 'done';
    }

    // A renewal keeps the term; anything else (free, expired, ours from an earlier run) begins a new one.
    const token = renewal ? transitions : transitions + 1;
    const body: LeaseObject = {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name, namespace, resourceVersion },
      spec: spec(token, renewal ? asMicroTime(lease.spec?.acquireTime) : undefined, at),
    };
    try {
      const written = await call('writing the lease', (client) => client.replaceNamespacedLease({ name, namespace, body }));
      if (written.metadata?.resourceVersion !== undefined) observed = { resourceVersion: written.metadata.resourceVersion, at };
    } catch (error) {
      if (statusOf(error) === 409) return 'conflict';
      throw leaseError(error, 'writing the lease');
    }
    if (!renewal) {
      log.info({ previousHolder: holder || null, fencingToken: token }, 'acquired the lease');
      if (!(await recorded(token))) return 'done';
    }
    renewed(token, at);
    return 'done';
  }

  async function runRound(): Promise<void> {
    try {
      // A conflict means the Lease changed since it was read: look again at once, once.
      if ((await attempt()) === 'conflict' && running) {
        if ((await attempt()) === 'conflict') log.info('lost a race for the lease');
      }
    } catch (error) {
      // The leader keeps its term until the renew deadline; the step-down timer ends it.
      log.warn({ code: isAppError(error) ? error.code : 'UNEXPECTED', err: errorMessage(error) }, 'lease round failed');
    }
  }

  function schedule(delayMs: number): void {
    if (!running) return;
    timer = setTimeout(() => {
      timer = undefined;
      round = runRound().finally(() => schedule(timing.renewIntervalMs));
    }, delayMs);
    timer.unref();
  }

  async function release(token: number): Promise<void> {
    try {
      const lease = await call('reading the lease', (client) => client.readNamespacedLease({ name, namespace }));
      if (lease.spec?.holderIdentity !== identity || lease.spec.leaseTransitions !== token) return;
      const at = now();
      await call('releasing the lease', (client) =>
        client.replaceNamespacedLease({
          name,
          namespace,
          body: {
            apiVersion: 'coordination.k8s.io/v1',
            kind: 'Lease',
            metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion ?? '' },
            spec: { holderIdentity: '', leaseDurationSeconds: 1, acquireTime: new MicroTime(at), renewTime: new MicroTime(at), leaseTransitions: token },
          },
        }),
      );
      log.info({ fencingToken: token }, 'released the lease');
    } catch (error) {
      // Not fatal: the Lease expires on its own after leaseDurationSeconds.
      log.warn({ err: errorMessage(error) }, 'could not release the lease; it will expire');
    }
  }

  return {
    identity,
    start() {
      if (running) return;
      running = true;
      schedule(0);
    },
    async stop() {
      if (!running) return;
      running = false;
      clearTimeout(timer);
      timer = undefined;
      await round;
      const held = current.leader ? current.fencingToken : null;
      // Stop acting as leader before the Lease is let go.
      stepDown('stopping');
      if (held !== null) await release(held);
    },
    state: () => current,
    fence: () => (current.leader && current.fencingToken !== null ? { lease: fenceLease, token: current.fencingToken } : null),
    onChange(listener) {
      listeners.push(listener);
    },
  };
}
