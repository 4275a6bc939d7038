import { Redis } from 'ioredis';
import { createHeartbeatStore, HEARTBEAT_CHUNK, type HeartbeatStore, type HeartbeatUpdate } from '../../../../services/heartbeat/store.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

// The store's scripts against the real Redis: a batch larger than one script call is split into
// chunks (pipelined) with the same outcome as one call, lapsed agents resume once, stale instances
// and untracked agents change nothing, and intervals are remembered.
jest.setTimeout(60_000);

const settings = { missFactor: 3, minTtlMs: 1_000, defaultIntervalMs: 10_000 };

describe('heartbeat store: heartbeats in chunks', () => {
  let redis: Redis;
  let store: HeartbeatStore;
  let prefix: string;
  const partition = 0;
  const key = (name: string) => `${prefix}p${partition}:${name}`;
  const hb = (agentId: string, instanceId: string, intervalMs: number | null, last = `{"a":"${agentId}","i":"${instanceId}"}`, stopping = false): HeartbeatUpdate => ({ agentId, instanceId, intervalMs, last, stopping });

  beforeAll(() => {
    redis = new Redis(testEnv().REDIS_URL ?? '', { maxRetriesPerRequest: 1 });
    prefix = `agent-manager:${uniqueName('hb-store')}.heartbeat:`;
    store = createHeartbeatStore(redis, prefix, settings);
  });

  afterAll(async () => {
    const found = await redis.keys(`${prefix}*`);
    if (found.length > 0) await redis.del(...found);
    await redis.quit();
  });

  it('applies a batch of several chunks as one call would', async () => {
    const total = HEARTBEAT_CHUNK * 2 + 500;
    const ids = Array.from({ length: total }, (_, i) => `agent-${i}`);
    const now = 1_000_000;
    // All tracked with instance inst-<id>, but the last 10 untracked (unknown agents).
    await store.applyStatuses(
      partition,
      now,
      ids.slice(0, total - 10).map((agentId) => ({ agentId, action: 'track' as const, instanceId: `inst-${agentId}` })),
    );
    // agent-5 lapses (a sweep with a cutoff past its deadline, the others' moved later first).
    await redis.zadd(key('deadlines'), now + 500, 'agent-5');
    const lapses = await store.sweep(partition, now + 600, now, 100);
    expect(lapses.map((l) => l.agentId)).toEqual(['agent-5']);
    expect(await redis.hget(key('interval'), 'agent-7')).toBeNull();

    const updates: HeartbeatUpdate[] = ids.map((id) => hb(id, `inst-${id}`, 2_000));
    updates.push(hb('agent-3', 'stale-instance', 9_000)); // another instance: changes nothing
    updates.push(hb('agent-7', 'inst-agent-7', 4_000, '{"later":true}')); // its later heartbeat in a later chunk
    const later = now + 10_000;
    const outcome = await store.applyHeartbeats(partition, later, updates);
    expect(outcome).toEqual({ tracked: total - 10 + 1, resumed: 1, ignored: 10, otherInstance: 1, stopping: 0 });

    // Deadlines moved (factor 3 × 2,000 ms), the later heartbeat's interval wins.
    expect(Number(await redis.zscore(key('deadlines'), 'agent-0'))).toBe(later + 6_000);
    expect(Number(await redis.zscore(key('deadlines'), `agent-${total - 11}`))).toBe(later + 6_000);
    expect(Number(await redis.zscore(key('deadlines'), 'agent-7'))).toBe(later + 12_000);
    expect(await redis.hget(key('interval'), 'agent-7')).toBe('4000');
    expect(await redis.get(`${prefix}last:agent-7`)).toBe('{"later":true}');
    // The stale instance: nothing of it stored.
    expect(await redis.hget(key('interval'), 'agent-3')).toBe('2000');
    expect(await redis.get(`${prefix}last:agent-3`)).toBe('{"a":"agent-3","i":"inst-agent-3"}');
    // Untracked agents: interval remembered, no deadline, no last heartbeat.
    expect(await redis.zscore(key('deadlines'), `agent-${total - 1}`)).toBeNull();
    expect(await redis.hget(key('interval'), `agent-${total - 1}`)).toBe('2000');
    expect(await redis.get(`${prefix}last:agent-${total - 1}`)).toBeNull();
    // The lapsed agent is back: tracked, RESUMED queued after its MISSED, its recover dropped.
    expect(await redis.zscore(key('lapsed'), 'agent-5')).toBeNull();
    expect(Number(await redis.zscore(key('deadlines'), 'agent-5'))).toBe(later + 6_000);
    expect((await store.pending(partition, 10)).map((c) => c.kind)).toEqual(['missed', 'resumed']);
    expect(await redis.zcard(key('deadlines'))).toBe(total - 10);

    // The same batch again (a retry after a failed chunk): no second RESUMED, nothing else changes.
    const again = await store.applyHeartbeats(partition, later, updates);
    expect(again).toEqual({ tracked: total - 10 + 1, resumed: 0, ignored: 10, otherInstance: 1, stopping: 0 });
    expect((await store.pending(partition, 10)).map((c) => c.kind)).toEqual(['missed', 'resumed']);
  });

  it('keeps the interval of heartbeats without one and stores an unchanged one once', async () => {
    await store.applyStatuses(partition, 0, [{ agentId: 'quiet', action: 'track', instanceId: 'q' }]);
    await store.applyHeartbeats(partition, 100, [hb('quiet', 'q', 3_000)]);
    await store.applyHeartbeats(partition, 200, [hb('quiet', 'q', null)]);
    expect(await redis.hget(key('interval'), 'quiet')).toBe('3000');
    // Without an interval the deadline uses the default (3 × 10,000 ms).
    expect(Number(await redis.zscore(key('deadlines'), 'quiet'))).toBe(200 + 30_000);
    await store.applyHeartbeats(partition, 300, [hb('quiet', 'q', 3_000), hb('quiet', 'q2', 5_000)]);
    expect(await redis.hget(key('interval'), 'quiet')).toBe('3000');
  });

  it('a stopping heartbeat of the current instance ends the tracking; of another instance it changes nothing', async () => {
    const own = 1; // a partition of its own: the tests above leave deadlines in partition 0
    const ownKey = (name: string) => `${prefix}p${own}:${name}`;
    await store.applyStatuses(own, 0, [
      { agentId: 'leaving', action: 'track', instanceId: 'l1' },
      { agentId: 'staying', action: 'track', instanceId: 's1' },
      { agentId: 'was-lapsed', action: 'track', instanceId: 'w1' },
    ]);
    await redis.zadd(ownKey('deadlines'), 10, 'was-lapsed');
    expect((await store.sweep(own, 20, 20, 10)).map((l) => l.agentId)).toEqual(['was-lapsed']);

    const outcome = await store.applyHeartbeats(own, 1_000, [
      hb('leaving', 'l1', 1_000, '{"last":true}', true),
      hb('staying', 'old-instance', 1_000, '{}', true), // a stale instance stopping: not this agent's stop
      hb('staying', 's1', 1_000),
      hb('was-lapsed', 'w1', 1_000, '{}', true), // back just to say it stops: RESUMED, then untracked
    ]);
    expect(outcome).toEqual({ tracked: 3, resumed: 1, ignored: 0, otherInstance: 1, stopping: 2 });
    expect(await redis.zscore(ownKey('deadlines'), 'leaving')).toBeNull();
    expect(await redis.zscore(ownKey('deadlines'), 'was-lapsed')).toBeNull();
    expect(await redis.zscore(ownKey('lapsed'), 'was-lapsed')).toBeNull();
    expect(Number(await redis.zscore(ownKey('deadlines'), 'staying'))).toBe(1_000 + 3_000);
    expect(await redis.get(`${prefix}last:leaving`)).toBe('{"last":true}');
    // Nothing of it lapses any more, and its later heartbeats (a retried send) do not track it again.
    expect(await store.sweep(own, 1_000_000, 1_000_000, 10)).toEqual([expect.objectContaining({ agentId: 'staying' })]);
    expect(await store.applyHeartbeats(own, 2_000, [hb('leaving', 'l1', 1_000)])).toEqual({ tracked: 0, resumed: 0, ignored: 1, otherInstance: 0, stopping: 0 });
    // A new run (RUNNING with a new instance) is tracked again.
    await store.applyStatuses(own, 3_000, [{ agentId: 'leaving', action: 'track', instanceId: 'l2' }]);
    expect(await redis.zscore(ownKey('deadlines'), 'leaving')).not.toBeNull();
  });
});
