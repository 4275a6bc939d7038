/**
 * The heartbeat service's pure decisions: deadlines, what a status means for tracking, the
 * mass-failure guard and the recover rate, command ids. No I/O and no clock (times are arguments).
 */
import { createHash } from 'node:crypto';
import type { AgentState, AgentStatus } from '../../lib/contracts/types.ts';

export interface DeadlineSettings {
  /** Missed = no heartbeat for `max(missFactor × interval, minTtlMs)`. */
  readonly missFactor: number;
  readonly minTtlMs: number;
  /** The interval assumed for an agent that does not announce one. */
  readonly defaultIntervalMs: number;
}

/** How long an agent may stay silent: `max(missFactor × interval, minTtlMs)`. */
export function ttlMs(intervalMs: number | null | undefined, settings: DeadlineSettings): number {
  const interval = intervalMs !== null && intervalMs !== undefined && intervalMs > 0 ? intervalMs : settings.defaultIntervalMs;
  return Math.max(Math.ceil(settings.missFactor * interval), settings.minTtlMs);
}

/** The deadline of an agent heard from at `now`. */
export function deadlineMs(now: number, intervalMs: number | null | undefined, settings: DeadlineSettings): number {
  return now + ttlMs(intervalMs, settings);
}

export type TrackingAction = 'track' | 'untrack' | 'forget';

/**
 * What a status means for tracking: RUNNING starts it (an agent expected to heartbeat), an intended
 * stop or an end stops it (so it is never a miss), DESTROYED also forgets the last heartbeat.
 * STARTING ends it too: the provisioner is (re)starting the agent and watches the start itself (its
 * start timeout); the old run's deadline must not lapse meanwhile, nor its instance be the one that
 * counts once the new run's RUNNING comes. The other states change nothing: UNHEALTHY is the
 * provisioner's answer to our own MISSED, and the agent stays tracked (lapsed) so that its returning
 * heartbeats bring a RESUMED.
 */
export function trackingAction(state: AgentState): TrackingAction | undefined {
  switch (state) {
    case 'RUNNING':
      return 'track';
    case 'STARTING':
    case 'STOPPING':
    case 'STOPPED':
    case 'DESTROYING':
    case 'FAILED':
      return 'untrack';
    case 'DESTROYED':
      return 'forget';
    default:
      return undefined;
  }
}

/**
 * The tracking action of a status record. Only a transition counts: ingest echoes an agent's current
 * state (`previousState === state`) when it answers a request, and its outbox is not ordered with
 * the provisioner's, so an echoed RUNNING may arrive after the STOPPING that followed it — acting on
 * it would track a stopped agent again and raise a false lapse.
 */
export function trackingActionOf(status: Pick<AgentStatus, 'state' | 'previousState'>): TrackingAction | undefined {
  return status.previousState === status.state ? undefined : trackingAction(status.state);
}

/** A UUID made from `parts`: the same lapse always gets the same command id (the provisioner de-duplicates on it). */
export function commandIdOf(...parts: readonly string[]): string {
  const hex = createHash('sha256').update(parts.join('\u0000')).digest('hex');
  // Version 5-like layout (name-based), variant 10xx.
  const variant = ((parseInt(hex.slice(16, 18), 16) & 0x3f) | 0x80).toString(16).padStart(2, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-${variant}${hex.slice(18, 20)}-${hex.slice(20, 32)}`;
}

export interface GuardSettings {
  /** Mass failure: more than this fraction of the tracked agents lapse within `windowMs`. */
  readonly ratio: number;
  readonly windowMs: number;
  /** Below this many tracked agents the guard never trips (2 of 3 lapsing is not a network problem). */
  readonly minAgents: number;
}

export interface GuardSample {
  /** Tracked agents now (healthy and lapsed). */
  readonly tracked: number;
  /** Agents lapsed now (not yet back). */
  readonly lapsed: number;
}

export type GuardChange = { readonly kind: 'tripped' | 'cleared'; readonly lapses: number; readonly tracked: number; readonly ratio: number };

/**
 * The mass-failure guard (like the Kubernetes node lifecycle controller's unhealthy-zone threshold):
 * it trips when more than `ratio` of the tracked agents lapsed within the window, and clears once
 * both the lapses of the window and the agents still lapsed are at or below the ratio again. While
 * tripped, recovers are held (the agents are marked UNHEALTHY all the same).
 */
export class MassFailureGuard {
  readonly #settings: GuardSettings;
  #lapses: number[] = [];
  #tripped = false;

  constructor(settings: GuardSettings) {
    this.#settings = settings;
  }

  get tripped(): boolean {
    return this.#tripped;
  }

  /** `count` lapses declared at `now`. */
  recordLapses(now: number, count: number): void {
    for (let i = 0; i < count; i++) this.#lapses.push(now);
  }

  lapsesInWindow(now: number): number {
    const since = now - this.#settings.windowMs;
    let first = 0;
    while (first < this.#lapses.length && (this.#lapses[first] as number) <= since) first++;
    if (first > 0) this.#lapses = this.#lapses.slice(first);
    return this.#lapses.length;
  }

  /** Re-evaluates with the current counts; returns the change, if any. */
  evaluate(now: number, sample: GuardSample): GuardChange | undefined {
    const lapses = this.lapsesInWindow(now);
    const { ratio, minAgents } = this.#settings;
    const tracked = Math.max(sample.tracked, 1);
    const windowRatio = lapses / tracked;
    if (!this.#tripped) {
      if (sample.tracked >= minAgents && windowRatio > ratio) {
        this.#tripped = true;
        return { kind: 'tripped', lapses, tracked: sample.tracked, ratio: windowRatio };
      }
      return undefined;
    }
    if (windowRatio <= ratio && sample.lapsed / tracked <= ratio) {
      this.#tripped = false;
      return { kind: 'cleared', lapses, tracked: sample.tracked, ratio: windowRatio };
    }
    return undefined;
  }
}

/** A token bucket: at most `burst` at once, refilled at `perSecond`. Bounds the recovers sent. */
export class RateLimiter {
  readonly #perSecond: number;
  readonly #burst: number;
  #tokens: number;
  #at: number;

  constructor(perSecond: number, burst: number, now: number) {
    this.#perSecond = perSecond;
    this.#burst = burst;
    this.#tokens = burst;
    this.#at = now;
  }

  /** Takes up to `wanted` tokens; returns how many were granted. */
  take(now: number, wanted: number): number {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#perSecond);
    this.#at = now;
    const granted = Math.max(0, Math.min(wanted, Math.floor(this.#tokens)));
    this.#tokens -= granted;
    return granted;
  }
}

/** A partition is caught up as of the log ends read at one moment when everything below them is handled, on every topic. */
export function caughtUp(handledNext: readonly (bigint | undefined)[], ends: readonly (bigint | undefined)[]): boolean {
  if (handledNext.length !== ends.length) return false;
  for (let i = 0; i < ends.length; i++) {
    const next = handledNext[i];
    const end = ends[i];
    if (next === undefined || end === undefined || next < end) return false;
  }
  return true;
}
