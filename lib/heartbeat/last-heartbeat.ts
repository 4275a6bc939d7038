/**
 * The last heartbeat of each agent, as the heartbeat service stores it in Redis and the API reads it.
 *
 * Redis key layout (every key starts with `keyPrefix`, see `heartbeatKeyPrefix`):
 *
 *   <prefix>last:<agentId>            STRING  JSON of `StoredHeartbeat` (the last heartbeat processed),
 *                                             written in the same script as the agent's deadline (one
 *                                             round trip per Kafka batch); deleted when the agent is
 *                                             DESTROYED. Only tracked agents (RUNNING per agent-status)
 *                                             are written: heartbeats of unknown agents are ignored.
 *   <prefix>p<partition>:deadlines    ZSET    tracked, healthy agents of one agent-heartbeats partition
 *                                             → deadline (ms since the epoch)
 *   <prefix>p<partition>:lapsed       ZSET    agents whose deadline lapsed → when (ms)
 *   <prefix>p<partition>:interval     HASH    agentId → the interval (ms) its last heartbeat announced
 *   <prefix>p<partition>:instance     HASH    agentId → its current instance, as its RUNNING status named
 *                                             it; heartbeats of another instance are ignored
 *   <prefix>p<partition>:pending      ZSET    commands decided but not yet produced (`<kind>|<agentId>|<lapse>`)
 *                                             → when decided; removed once Kafka acknowledged them
 *   <prefix>lapse-seq                 STRING  counter numbering lapses (deterministic command ids)
 *
 * Partition = the agent's partition of agent-heartbeats (the same number on agent-status: both are
 * keyed by agentId with the same partition count).
 */
import type { Redis } from 'ioredis';
import type { AgentHeartbeat } from '../contracts/types.ts';
import { unavailableError } from '../errors.ts';

/** An agent's last heartbeat, as `GET /v1/agents/:id` and `agent-manager agents show` present it. */
export interface LastHeartbeat {
  /** When the heartbeat service processed it (its clock). */
  readonly receivedAt: Date;
  /** When the agent sent it (the agent's clock). */
  readonly sentAt: Date;
  readonly sequence: number;
  /** The agent's run (pod name or host:pid): a new value means the agent restarted. */
  readonly instance: string;
  readonly pid: number | null;
  /** The heartbeat interval the agent announced. */
  readonly intervalMs: number;
  readonly cpuPercent: number | null;
  readonly memoryRssBytes: number | null;
  /** Agent-specific gauges (`metrics.custom`). */
  readonly gauges: Record<string, number>;
}

/** The stored form (short keys: one per tracked agent, rewritten on every heartbeat). */
interface StoredHeartbeat {
  r: number;
  s: number;
  q: number;
  i: string;
  p: number | null;
  n: number;
  c: number | null;
  m: number | null;
  g: Record<string, number>;
}

/** The key prefix of one deployment's heartbeat state: `agent-manager:<TOPIC_PREFIX>heartbeat:`. */
export function heartbeatKeyPrefix(topicPrefix: string): string {
  return `agent-manager:${topicPrefix}heartbeat:`;
}

export function lastHeartbeatKey(keyPrefix: string, agentId: string): string {
  return `${keyPrefix}last:${agentId}`;
}

/** The stored value of a heartbeat processed at `receivedAt` (the writer's side; see the key layout). */
export function encodeLastHeartbeat(heartbeat: AgentHeartbeat, receivedAt: number, intervalMs: number): string {
  const stored: StoredHeartbeat = {
    r: receivedAt,
    s: heartbeat.sentAt.getTime(),
    q: heartbeat.sequence,
    i: heartbeat.instanceId,
    p: heartbeat.pid,
    n: intervalMs,
    c: heartbeat.metrics?.cpuPercent ?? null,
    m: heartbeat.metrics?.memoryRssBytes ?? null,
    g: heartbeat.metrics?.custom ?? {},
  };
  return JSON.stringify(stored);
}

export function decodeLastHeartbeat(text: string): LastHeartbeat | null {
  let stored: StoredHeartbeat;
  try {
    stored = JSON.parse(text) as StoredHeartbeat;
  } catch {
    return null;
  }
  if (typeof stored !== 'object' || stored === null || typeof stored.r !== 'number' || typeof stored.s !== 'number') return null;
  return {
    receivedAt: new Date(stored.r),
    sentAt: new Date(stored.s),
    sequence: stored.q,
    instance: stored.i,
    pid: stored.p ?? null,
    intervalMs: stored.n,
    cpuPercent: stored.c ?? null,
    memoryRssBytes: stored.m ?? null,
    gauges: stored.g ?? {},
  };
}

/**
 * The last heartbeat of `agentId` (null when none is stored: never heartbeated, not tracked, or
 * destroyed). Throws HEARTBEAT_STORE_UNAVAILABLE (an outage of `redis`, retryable) when Redis cannot answer.
 */
export async function readLastHeartbeat(redis: Redis, keyPrefix: string, agentId: string): Promise<LastHeartbeat | null> {
  let text: string | null;
  try {
    text = await redis.get(lastHeartbeatKey(keyPrefix, agentId));
  } catch (error) {
    throw unavailableError('redis', 'HEARTBEAT_STORE_UNAVAILABLE', `cannot read the last heartbeat of ${agentId} from Redis`, error);
  }
  return text === null ? null : decodeLastHeartbeat(text);
}
