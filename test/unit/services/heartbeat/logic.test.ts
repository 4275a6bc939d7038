import { caughtUp, commandIdOf, deadlineMs, MassFailureGuard, RateLimiter, trackingAction, trackingActionOf, ttlMs } from '../../../../services/heartbeat/logic.ts';
import { decodeLastHeartbeat, encodeLastHeartbeat } from '../../../../lib/heartbeat/last-heartbeat.ts';
import { loadHeartbeatConfig, validateHeartbeat } from '../../../../services/heartbeat/main.ts';
import { isAppError } from '../../../../lib/errors.ts';

const settings = { missFactor: 3, minTtlMs: 5_000, defaultIntervalMs: 2_000 };

describe('heartbeat deadlines', () => {
  it('is max(factor × interval, min TTL), with the default interval when none is announced', () => {
    expect(ttlMs(2_000, settings)).toBe(6_000);
    expect(ttlMs(500, settings)).toBe(5_000);
    expect(ttlMs(10_000, settings)).toBe(30_000);
    expect(ttlMs(null, settings)).toBe(6_000);
    expect(ttlMs(0, settings)).toBe(6_000);
    expect(deadlineMs(1_000, 2_000, settings)).toBe(7_000);
    expect(ttlMs(333, { ...settings, missFactor: 2.5, minTtlMs: 1 })).toBe(833);
  });

  it('tracks on RUNNING, stops on intended stops and ends, forgets on DESTROYED, ignores the rest', () => {
    expect(trackingAction('RUNNING')).toBe('track');
    // STARTING too: a restart's old run must neither lapse nor stay the instance that counts.
    for (const state of ['STARTING', 'STOPPING', 'STOPPED', 'DESTROYING', 'FAILED'] as const) expect(trackingAction(state)).toBe('untrack');
    expect(trackingAction('DESTROYED')).toBe('forget');
    // UNHEALTHY keeps tracking (the agent stays lapsed), so returning heartbeats bring a RESUMED.
    for (const state of ['PENDING', 'PROVISIONING', 'UNHEALTHY', 'REJECTED'] as const) expect(trackingAction(state)).toBeUndefined();
  });

  it("acts only on transitions: ingest's echo of the current state (previousState = state) changes nothing", () => {
    expect(trackingActionOf({ state: 'RUNNING', previousState: 'STARTING' })).toBe('track');
    expect(trackingActionOf({ state: 'RUNNING', previousState: 'RUNNING' })).toBeUndefined();
    expect(trackingActionOf({ state: 'STOPPED', previousState: 'STOPPED' })).toBeUndefined();
    expect(trackingActionOf({ state: 'STOPPING', previousState: 'RUNNING' })).toBe('untrack');
  });

  it('is caught up only when every topic is handled up to its log end', () => {
    expect(caughtUp([10n, 5n], [10n, 5n])).toBe(true);
    expect(caughtUp([11n, 5n], [10n, 5n])).toBe(true);
    expect(caughtUp([9n, 5n], [10n, 5n])).toBe(false);
    expect(caughtUp([10n, undefined], [10n, 5n])).toBe(false);
    expect(caughtUp([10n, 5n], [10n, undefined])).toBe(false);
  });

  it('derives one UUID per lapse and kind (a command sent twice is de-duplicated)', () => {
    const a = commandIdOf('p:', 'missed', 'agent', '7');
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(commandIdOf('p:', 'missed', 'agent', '7')).toBe(a);
    expect(commandIdOf('p:', 'recover', 'agent', '7')).not.toBe(a);
    expect(commandIdOf('p:', 'missed', 'agent', '8')).not.toBe(a);
  });
});

describe('mass-failure guard', () => {
  const guard = () => new MassFailureGuard({ ratio: 0.5, windowMs: 10_000, minAgents: 10 });

  it('trips when more than the ratio lapses within the window, and clears when both the window and the lapsed fall back', () => {
    const g = guard();
    g.recordLapses(1_000, 5);
    expect(g.evaluate(1_000, { tracked: 10, lapsed: 5 })).toBeUndefined(); // 50%: not more than
    g.recordLapses(2_000, 1);
    expect(g.evaluate(2_000, { tracked: 10, lapsed: 6 })).toMatchObject({ kind: 'tripped', lapses: 6, tracked: 10 });
    expect(g.tripped).toBe(true);
    // Still lapsed: stays tripped after the window.
    expect(g.evaluate(20_000, { tracked: 10, lapsed: 6 })).toBeUndefined();
    expect(g.evaluate(20_000, { tracked: 10, lapsed: 2 })).toMatchObject({ kind: 'cleared' });
    expect(g.tripped).toBe(false);
  });

  it('never trips below the minimum of tracked agents; lapses leave the window', () => {
    const g = guard();
    g.recordLapses(0, 5);
    expect(g.evaluate(0, { tracked: 6, lapsed: 5 })).toBeUndefined();
    expect(g.lapsesInWindow(10_001)).toBe(0);
  });

  it('bounds recovers: a burst, then the rate', () => {
    const limiter = new RateLimiter(2, 3, 0);
    expect(limiter.take(0, 10)).toBe(3);
    expect(limiter.take(0, 10)).toBe(0);
    expect(limiter.take(1_000, 10)).toBe(2);
    expect(limiter.take(1_250, 10)).toBe(0);
    expect(limiter.take(10_000, 10)).toBe(3);
  });
});

describe('heartbeat settings and validation', () => {
  it('names every bad setting at start-up', () => {
    let caught: unknown;
    try {
      loadHeartbeatConfig({ HEARTBEAT_MISS_FACTOR: '0.5', HEARTBEAT_MASS_FAILURE_RATIO: '2', HEARTBEAT_MIN_TTL_MS: 'soon' });
    } catch (error) {
      caught = error;
    }
    expect(isAppError(caught) && caught.code).toBe('CONFIG_INVALID');
    expect(String((caught as Error).message)).toMatch(/HEARTBEAT_MISS_FACTOR[\s\S]*HEARTBEAT_MIN_TTL_MS[\s\S]*HEARTBEAT_MASS_FAILURE_RATIO/);
    expect(loadHeartbeatConfig({})).toMatchObject({ HEARTBEAT_MISS_FACTOR: 3, HEARTBEAT_MIN_TTL_MS: 5_000, HEARTBEAT_MASS_FAILURE_RATIO: 0.5 });
  });

  it('refuses heartbeats the schema cannot refuse', () => {
    const ok = { agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7', instanceId: 'h:1', pid: 1, sequence: 0, sentAt: new Date(), metrics: null, intervalMs: null };
    expect(validateHeartbeat(ok)).toBe(ok);
    expect(() => validateHeartbeat({ ...ok, agentId: 'x' })).toThrow(/agentId/);
    expect(() => validateHeartbeat({ ...ok, sequence: -1 })).toThrow(/sequence/);
    expect(() => validateHeartbeat({ ...ok, intervalMs: 0 })).toThrow(/intervalMs/);
    expect(() => validateHeartbeat({ ...ok, instanceId: '' })).toThrow(/instanceId/);
  });

  it('stores the last heartbeat compactly and reads it back', () => {
    const hb = { agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7', instanceId: 'h:1', pid: 7, sequence: 42, sentAt: new Date(1_000), metrics: { cpuPercent: 3.5, memoryRssBytes: 99, custom: { q: 1 } }, intervalMs: 500, stopping: false };
    expect(decodeLastHeartbeat(encodeLastHeartbeat(hb, 2_000, 500))).toEqual({
      receivedAt: new Date(2_000),
      sentAt: new Date(1_000),
      sequence: 42,
      instance: 'h:1',
      pid: 7,
      intervalMs: 500,
      cpuPercent: 3.5,
      memoryRssBytes: 99,
      gauges: { q: 1 },
    });
    expect(decodeLastHeartbeat('not json')).toBeNull();
  });
});
