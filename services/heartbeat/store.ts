/**
 * The heartbeat service's state in Redis (the key layout is in lib/heartbeat/last-heartbeat.ts):
 * Lua scripts for heartbeats and statuses (a Kafka batch is several calls of at most
 * HEARTBEAT_CHUNK, pipelined: one round trip) and one per sweep. Each call is atomic, so a lapse
 * is declared once (its deadline moves to `lapsed` in the same script that queues its commands)
 * whoever sweeps, across restarts and rebalances; queued commands stay in
 * `pending` until Kafka acknowledged them, under ids derived from the lapse (the provisioner
 * de-duplicates a command sent twice).
 */
import type { Redis } from 'ioredis';
import { unavailableError } from '../../lib/errors.ts';
import type { DeadlineSettings, TrackingAction } from './logic.ts';

// KEYS: 1 deadlines, 2 lapsed, 3 interval, 4 lapse, 5 pending, 6 seq, 7 instance (all of one partition).
// ARGV: 1 last-heartbeat key prefix, 2 now, 3 miss factor, 4 min TTL, 5 default interval, then per agent.
const PREAMBLE = `
local now = tonumber(ARGV[2])
local factor = tonumber(ARGV[3])
local minTtl = tonumber(ARGV[4])
local defaultInterval = tonumber(ARGV[5])
local function deadline(interval)
  if interval == nil or interval <= 0 then interval = defaultInterval end
  return now + math.max(math.ceil(factor * interval), minTtl)
end
`;

/**
 * Heartbeats (ARGV 6.. in fives: agentId, instanceId, intervalMs or '', last-heartbeat JSON, '1' when
 * stopping). A heartbeat from another instance than the one the agent's RUNNING named (a stale
 * process: the old one after a restart, a hung one waking up) changes nothing. Otherwise a tracked
 * agent's deadline moves and its last heartbeat is stored; a lapsed one comes back (RESUMED queued
 * after its MISSED, its held recover dropped); any other is ignored. A `stopping` heartbeat (the
 * instance shutting down on purpose) does the same, then ends the tracking as a STOPPING status
 * would (the instance is kept, so its later heartbeats still count as its own and are ignored):
 * the provisioner's STOPPING comes through its outbox and may arrive after the silence. The interval is remembered for every agent but
 * another instance's, so tracking that starts later (RUNNING) uses it.
 *
 * The common case (a tracked agent) costs no per-heartbeat call: instances, deadlines and known
 * intervals are read with one HMGET/ZMSCORE/HMGET for the whole chunk, and written with one ZADD,
 * one MSET and (only for intervals that changed) one HSET. Heartbeats never add or remove an
 * instance or a tracked deadline, so the chunk-wide reads stay true while the script runs, except
 * for an agent resumed earlier in the same chunk (another of its instances: `back`). Lapsed agents
 * (rare) take the per-agent path. At most HEARTBEAT_CHUNK heartbeats per call, which keeps every
 * `unpack` below Lua's 8,000-value limit.
 * Returns {tracked, resumed, ignored, otherInstance, stopping}.
 */
const APPLY_HEARTBEATS = `${PREAMBLE}
local tracked, resumed, ignored, other, stopping = 0, 0, 0, 0, 0
local ids = {}
for i = 6, #ARGV, 5 do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return {0, 0, 0, 0, 0} end
local instances = redis.call('HMGET', KEYS[7], unpack(ids))
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local known = redis.call('HMGET', KEYS[3], unpack(ids))
local intervals, changed, zadd, mset, back, ended = {}, {}, {}, {}, {}, {}
local function remember(k, id, value)
  local n = tonumber(value)
  if n == nil or n <= 0 then return end
  local current = intervals[id]
  if current == nil then current = known[k] end
  if current ~= value then
    if intervals[id] == nil then changed[#changed + 1] = id end
    intervals[id] = value
  end
end
for k = 1, #ids do
  local i = 1 + 5 * k
  local id = ids[k]
  local current = instances[k]
  local interval = tonumber(ARGV[i + 2])
  if current and current ~= ARGV[i + 1] then
    other = other + 1
  elseif scores[k] or back[id] then
    remember(k, id, ARGV[i + 2])
    zadd[#zadd + 1] = deadline(interval)
    zadd[#zadd + 1] = id
    mset[#mset + 1] = ARGV[1] .. id
    mset[#mset + 1] = ARGV[i + 3]
    tracked = tracked + 1
    if ARGV[i + 4] == '1' then ended[#ended + 1] = id end
  elseif redis.call('ZSCORE', KEYS[2], id) then
    remember(k, id, ARGV[i + 2])
    local n = redis.call('HGET', KEYS[4], id) or '0'
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
    zadd[#zadd + 1] = deadline(interval)
    zadd[#zadd + 1] = id
    mset[#mset + 1] = ARGV[1] .. id
    mset[#mset + 1] = ARGV[i + 3]
    redis.call('ZREM', KEYS[5], 'recover|' .. id .. '|' .. n)
    redis.call('ZADD', KEYS[5], now, 'resumed|' .. id .. '|' .. n)
    back[id] = true
    tracked = tracked + 1
    resumed = resumed + 1
    if ARGV[i + 4] == '1' then ended[#ended + 1] = id end
  else
    remember(k, id, ARGV[i + 2])
    ignored = ignored + 1
  end
end
if #zadd > 0 then redis.call('ZADD', KEYS[1], unpack(zadd)) end
if #mset > 0 then redis.call('MSET', unpack(mset)) end
if #changed > 0 then
  local hset = {}
  for _, id in ipairs(changed) do
    hset[#hset + 1] = id
    hset[#hset + 1] = intervals[id]
  end
  redis.call('HSET', KEYS[3], unpack(hset))
end
if #ended > 0 then
  redis.call('ZREM', KEYS[1], unpack(ended))
  stopping = #ended
end
return {tracked, resumed, ignored, other, stopping}
`;

/**
 * Statuses (ARGV 6.. in threes: agentId, track|untrack|forget, instanceId or ''). Any of them ends a
 * lapse and drops its unsent commands (the agent runs again, or is being stopped on purpose); track
 * starts (or keeps, with the later deadline) a deadline from the agent's known interval and, with an
 * instance, makes it the only one whose heartbeats count (without one, the instance already known
 * stays: ingest's echo of a RUNNING agent names none). The end of tracking forgets the instance, so
 * the next run's RUNNING starts afresh.
 */
const APPLY_STATUSES = `${PREAMBLE}
for i = 6, #ARGV, 3 do
  local id = ARGV[i]
  local action = ARGV[i + 1]
  local n = redis.call('HGET', KEYS[4], id)
  if n then
    redis.call('ZREM', KEYS[5], 'missed|' .. id .. '|' .. n, 'recover|' .. id .. '|' .. n, 'resumed|' .. id .. '|' .. n)
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[2], id)
  if action == 'track' then
    redis.call('ZADD', KEYS[1], 'GT', deadline(tonumber(redis.call('HGET', KEYS[3], id) or '')), id)
    if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[7], id, ARGV[i + 2]) end
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[7], id)
    if action == 'forget' then
      redis.call('HDEL', KEYS[3], id)
      redis.call('DEL', ARGV[1] .. id)
    end
  end
end
return 0
`;

/**
 * The sweep (ARGV: 1 cutoff, 2 now, 3 limit): deadlines at or before the cutoff lapse, each numbered
 * and queued as MISSED then RECOVER (scored by the deadline). Returns {agentId, deadline, …}.
 */
const SWEEP = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  local id = due[i]
  local at = due[i + 1]
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  local n = redis.call('INCR', KEYS[6])
  redis.call('HSET', KEYS[4], id, n)
  redis.call('ZADD', KEYS[5], at, 'missed|' .. id .. '|' .. n)
  redis.call('ZADD', KEYS[5], at, 'recover|' .. id .. '|' .. n)
  out[#out + 1] = id
  out[#out + 1] = at
end
return out
`;

type ScriptResult = unknown;

/**
 * The most heartbeats (or statuses) per script call. Redis runs one script at a time and every other
 * client (the provisioner's BullMQ timers too) waits for it; past 5 s it answers them BUSY. Measured
 * before the chunk-wide reads/writes: ~25 µs of Redis time per heartbeat (ZADD 6.5, SET 2.3, ZSCORE
 * 1.9, HSET 1.8, HGET 1.0 µs per call), and a whole Kafka batch per call ran up to 6.4 s. A batch is
 * now sent as several calls of at most this many, pipelined (still one round trip per batch), so
 * one call holds Redis for a few ms. Also keeps the script's `unpack` below Lua's 8,000 values.
 */
export const HEARTBEAT_CHUNK = 1_000;

interface HeartbeatCommands {
  hbApplyHeartbeats(...args: (string | number)[]): Promise<ScriptResult>;
  hbApplyStatuses(...args: (string | number)[]): Promise<ScriptResult>;
  hbSweep(...args: (string | number)[]): Promise<ScriptResult>;
}

export interface HeartbeatUpdate {
  readonly agentId: string;
  /** The instance that sent it (the heartbeat's instanceId). */
  readonly instanceId: string;
  readonly intervalMs: number | null;
  readonly last: string;
  /** The instance announced it is shutting down on purpose (its last heartbeat). */
  readonly stopping: boolean;
}

export interface StatusUpdate {
  readonly agentId: string;
  readonly action: TrackingAction;
  /** The agent's current instance, as the status names it (RUNNING); null when unknown. */
  readonly instanceId: string | null;
}

export type PendingKind = 'missed' | 'recover' | 'resumed';

export interface PendingCommand {
  readonly member: string;
  readonly kind: PendingKind;
  readonly agentId: string;
  readonly lapse: string;
  /** The deadline (missed, recover) or when the agent came back (resumed). */
  readonly score: number;
}

export interface Lapse {
  readonly agentId: string;
  readonly deadline: number;
}

export interface PartitionCounts {
  readonly tracked: number;
  readonly lapsed: number;
}

export interface HeartbeatOutcome {
  /** Heartbeats that moved a deadline (the resumed included). */
  readonly tracked: number;
  readonly resumed: number;
  /** Of agents not tracked (unknown, stopped, destroyed). */
  readonly ignored: number;
  /** Of tracked agents, from another instance than their current one. */
  readonly otherInstance: number;
  /** Tracked agents whose instance announced its stop: no longer tracked. */
  readonly stopping: number;
}

export interface HeartbeatStore {
  applyHeartbeats(partition: number, now: number, updates: readonly HeartbeatUpdate[]): Promise<HeartbeatOutcome>;
  applyStatuses(partition: number, now: number, updates: readonly StatusUpdate[]): Promise<void>;
  /** The earliest deadline of the partition, if any is at or before `now`. */
  anyDue(partition: number, now: number): Promise<boolean>;
  sweep(partition: number, cutoff: number, now: number, limit: number): Promise<Lapse[]>;
  pending(partition: number, limit: number): Promise<PendingCommand[]>;
  done(partition: number, members: readonly string[]): Promise<void>;
  counts(partitions: readonly number[]): Promise<PartitionCounts>;
}

function redisDown(what: string, error: unknown): Error {
  return unavailableError('redis', 'REDIS_UNAVAILABLE', `${what}: ${error instanceof Error ? error.message : String(error)}`, error);
}

export function createHeartbeatStore(redis: Redis, keyPrefix: string, settings: DeadlineSettings): HeartbeatStore {
  redis.defineCommand('hbApplyHeartbeats', { numberOfKeys: 7, lua: APPLY_HEARTBEATS });
  redis.defineCommand('hbApplyStatuses', { numberOfKeys: 7, lua: APPLY_STATUSES });
  redis.defineCommand('hbSweep', { numberOfKeys: 7, lua: SWEEP });
  const commands = redis as unknown as Redis & HeartbeatCommands;
  const lastPrefix = `${keyPrefix}last:`;
  const keys = (p: number) => [`${keyPrefix}p${p}:deadlines`, `${keyPrefix}p${p}:lapsed`, `${keyPrefix}p${p}:interval`, `${keyPrefix}p${p}:lapse`, `${keyPrefix}p${p}:pending`, `${keyPrefix}p${p}:seq`, `${keyPrefix}p${p}:instance`];
  const common = (now: number) => [lastPrefix, now, settings.missFactor, settings.minTtlMs, settings.defaultIntervalMs];

  async function call<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw redisDown(what, error);
    }
  }

  return {
    async applyHeartbeats(partition, now, updates) {
      // Each chunk is atomic on its own, which is all the state needs: what must change together is
      // per agent (its instance check, deadline, lapse, pending commands and last heartbeat), never
      // across agents. The updates are one per agent and instance, so an agent's heartbeats stay in
      // one chunk unless two of its instances are in the batch (each then judged on its own, as in
      // one script). A sweep may run between two chunks as it may between two batches: it declares
      // nothing before this batch is handled (caught up). If a chunk fails the batch is retried
      // whole; re-applying the chunks that ran is harmless (a deadline moved again, the same last
      // heartbeat; a resumed agent is tracked by then, so no second RESUMED).
      const outcome = { tracked: 0, resumed: 0, ignored: 0, otherInstance: 0, stopping: 0 };
      if (updates.length === 0) return outcome;
      const pipeline = redis.pipeline() as unknown as ReturnType<Redis['pipeline']> & HeartbeatCommands;
      for (let start = 0; start < updates.length; start += HEARTBEAT_CHUNK) {
        const args: (string | number)[] = [...keys(partition), ...common(now)];
        for (const u of updates.slice(start, start + HEARTBEAT_CHUNK)) args.push(u.agentId, u.instanceId, u.intervalMs ?? '', u.last, u.stopping ? '1' : '0');
        void pipeline.hbApplyHeartbeats(...args);
      }
      const results = await call('storing heartbeats', () => pipeline.exec());
      for (const [error, value] of results ?? []) {
        if (error) throw redisDown('storing heartbeats', error);
        const result = value as number[];
        outcome.tracked += Number(result[0]);
        outcome.resumed += Number(result[1]);
        outcome.ignored += Number(result[2]);
        outcome.otherInstance += Number(result[3] ?? 0);
        outcome.stopping += Number(result[4] ?? 0);
      }
      return outcome;
    },
    async applyStatuses(partition, now, updates) {
      // Chunked like heartbeats (each status concerns one agent; the chunks run in order, and a
      // retried batch replays them all in order, so the end state is the same).
      if (updates.length === 0) return;
      const pipeline = redis.pipeline() as unknown as ReturnType<Redis['pipeline']> & HeartbeatCommands;
      for (let start = 0; start < updates.length; start += HEARTBEAT_CHUNK) {
        const args: (string | number)[] = [...keys(partition), ...common(now)];
        for (const u of updates.slice(start, start + HEARTBEAT_CHUNK)) args.push(u.agentId, u.action, u.instanceId ?? '');
        void pipeline.hbApplyStatuses(...args);
      }
      const results = await call('storing statuses', () => pipeline.exec());
      for (const [error] of results ?? []) if (error) throw redisDown('storing statuses', error);
    },
    async anyDue(partition, now) {
      const [deadlines] = keys(partition) as [string];
      const due = await call('reading deadlines', () => redis.zrangebyscore(deadlines, '-inf', now, 'LIMIT', 0, 1));
      return due.length > 0;
    },
    async sweep(partition, cutoff, now, limit) {
      const result = (await call('sweeping', () => commands.hbSweep(...keys(partition), cutoff, now, limit))) as string[];
      const lapses: Lapse[] = [];
      for (let i = 0; i + 1 < result.length; i += 2) lapses.push({ agentId: result[i] as string, deadline: Number(result[i + 1]) });
      return lapses;
    },
    async pending(partition, limit) {
      const key = `${keyPrefix}p${partition}:pending`;
      const flat = await call('reading pending commands', () => redis.zrange(key, '0', String(limit - 1), 'WITHSCORES'));
      const out: PendingCommand[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const member = flat[i] as string;
        const [kind, agentId, lapse] = member.split('|');
        if ((kind === 'missed' || kind === 'recover' || kind === 'resumed') && agentId && lapse) out.push({ member, kind, agentId, lapse, score: Number(flat[i + 1]) });
      }
      return out;
    },
    async done(partition, members) {
      if (members.length === 0) return;
      await call('clearing sent commands', () => redis.zrem(`${keyPrefix}p${partition}:pending`, ...members));
    },
    async counts(partitions) {
      if (partitions.length === 0) return { tracked: 0, lapsed: 0 };
      const pipeline = redis.pipeline();
      for (const p of partitions) pipeline.zcard(`${keyPrefix}p${p}:deadlines`).zcard(`${keyPrefix}p${p}:lapsed`);
      const results = await call('counting agents', () => pipeline.exec());
      let tracked = 0;
      let lapsed = 0;
      (results ?? []).forEach(([error, value], i) => {
        if (error) throw redisDown('counting agents', error);
        if (i % 2 === 0) tracked += Number(value);
        else lapsed += Number(value);
      });
      return { tracked: tracked + lapsed, lapsed };
    },
  };
}
