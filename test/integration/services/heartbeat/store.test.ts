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
  const hb = (agentId: string, instanceId: string, intervalMs: number | null, last = `{"a":"${agentId}","i":"${instanceId}"}`): HeartbeatUpdate => ({ agentId, instanceId, intervalMs, last });

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
    expect(outcome).toEqual({ tracked: total - 10 + 1, resumed: 1, ignored: 10, otherInstance: 1 });

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
    expect(again).toEqual({ tracked: total - 10 + 1, resumed: 0, ignored: 10, otherInstance: 1 });
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
});
