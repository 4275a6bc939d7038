import type { AgentSpec, AgentState } from '../../lib/contracts/types.ts';
import type { Pool, PoolClient } from '../../lib/db/pool.ts';
import { retryableError } from '../../lib/errors.ts';
import { DEFAULT_RESTART_POLICY, type AgentSnapshot, type RestartPolicy } from './lifecycle.ts';

/** An agent row as the provisioner reads it. */
export interface AgentRecord {
  readonly id: string;
  readonly snapshot: AgentSnapshot;
  readonly spec: AgentSpec;
  readonly division: string;
  readonly region: string | null;
  readonly labels: Record<string, string>;
  readonly version: number;
  readonly updatedAt: Date;
}

/** The lifecycle bookkeeping kept in the `lifecycle` JSON column. */
interface LifecycleColumn {
  restartPolicy: RestartPolicy;
  generation: number;
  startAttempt: number;
  awaitingRetry: boolean;
  restarts: number;
  afterStop: 'START' | 'DESTROY' | null;
  /** The running instance (absent in rows written before it was kept, or when unknown). */
  instanceId?: string;
}

interface AgentRow {
  id: string;
  state: string;
  reason: string;
  spec: AgentSpec;
  lifecycle: Partial<LifecycleColumn>;
  division: string;
  region: string | null;
  labels: Record<string, string>;
  version: string;
  updated_at: Date;
}

const COLUMNS = 'id, state, reason, spec, lifecycle, division, region, labels, version, updated_at';

function toRecord(row: AgentRow): AgentRecord {
  const l = row.lifecycle;
  return {
    id: row.id,
    snapshot: {
      // An unknown stored state is passed through: the lifecycle rejects it as INVALID_STATE.
      state: row.state as AgentState,
      reason: row.reason,
      restartPolicy: l.restartPolicy ?? DEFAULT_RESTART_POLICY,
      generation: l.generation ?? 0,
      startAttempt: l.startAttempt ?? 0,
      awaitingRetry: l.awaitingRetry ?? false,
      restarts: l.restarts ?? 0,
      afterStop: l.afterStop ?? null,
      ...(typeof l.instanceId === 'string' ? { instanceId: l.instanceId } : {}),
    },
    spec: row.spec,
    division: row.division,
    region: row.region,
    labels: row.labels,
    version: Number(row.version),
    updatedAt: row.updated_at,
  };
}

function lifecycleColumn(s: AgentSnapshot): LifecycleColumn {
  return {
    restartPolicy: s.restartPolicy,
    generation: s.generation,
    startAttempt: s.startAttempt,
    awaitingRetry: s.awaitingRetry,
    restarts: s.restarts,
    afterStop: s.afterStop,
    ...(typeof s.instanceId === 'string' ? { instanceId: s.instanceId } : {}),
  };
}

/** Reads the agent and locks its row until the transaction ends: one writer per agent at a time. */
export async function lockAgent(client: PoolClient, agentId: string): Promise<AgentRecord | undefined> {
  const { rows } = await client.query<AgentRow>(`SELECT ${COLUMNS} FROM agents WHERE id = $1 FOR UPDATE`, [agentId]);
  return rows[0] ? toRecord(rows[0]) : undefined;
}

export async function readAgent(pool: Pool, agentId: string): Promise<AgentRecord | undefined> {
  const { rows } = await pool.query<AgentRow>(`SELECT ${COLUMNS} FROM agents WHERE id = $1`, [agentId]);
  return rows[0] ? toRecord(rows[0]) : undefined;
}

/** A new agent's row: the record as built in memory, with the request and command that made it. */
export type NewAgent = Omit<AgentRecord, 'updatedAt'> & { readonly requestId: string | null; readonly commandId: string | null };

export async function insertAgent(client: PoolClient, agent: NewAgent): Promise<void> {
  await client.query(
    `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, last_request_id, last_command_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
    [agent.id, agent.snapshot.state, agent.snapshot.reason, JSON.stringify(agent.spec), JSON.stringify(lifecycleColumn(agent.snapshot)), agent.division, agent.region, JSON.stringify(agent.labels), agent.version, agent.requestId, agent.commandId],
  );
}

/** Version-checked update to `newVersion` (one more per transition applied). A lost race is a retryable conflict. */
export async function updateAgent(
  client: PoolClient,
  agentId: string,
  expectedVersion: number,
  newVersion: number,
  snapshot: AgentSnapshot,
  ids: { requestId: string | null; commandId: string | null },
): Promise<void> {
  const { rowCount } = await client.query(
    `UPDATE agents SET state = $3, reason = $4, lifecycle = $5, version = $8, updated_at = now(),
       last_request_id = COALESCE($6, last_request_id), last_command_id = COALESCE($7, last_command_id)
     WHERE id = $1 AND version = $2`,
    [agentId, expectedVersion, snapshot.state, snapshot.reason, JSON.stringify(lifecycleColumn(snapshot)), ids.requestId, ids.commandId, newVersion],
  );
  if (rowCount !== 1) throw retryableError('VERSION_CONFLICT', `agent ${agentId} changed concurrently (expected version ${expectedVersion})`);
}

/** Records a command as applied; false when it was applied before (a redelivery). */
export async function markCommandApplied(client: PoolClient, commandId: string, agentId: string): Promise<boolean> {
  const { rowCount } = await client.query('INSERT INTO applied_commands (command_id, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [commandId, agentId]);
  return rowCount === 1;
}

/** GPUs held by the division's live agents, other than `exceptAgentId` (the policy's quota input). */
export async function divisionGpuUsage(db: Pool | PoolClient, division: string, exceptAgentId: string): Promise<number> {
  const { rows } = await db.query<{ gpus: string | null }>(
    `SELECT COALESCE(SUM((spec->'resources'->>'gpuCount')::int), 0) AS gpus FROM agents
     WHERE division = $1 AND id <> $2 AND state NOT IN ('DESTROYED', 'REJECTED', 'FAILED')`,
    [division, exceptAgentId],
  );
  return Number(rows[0]?.gpus ?? 0);
}

/** An agent as the reconciler looked at it. */
export interface ObservedRecord extends AgentRecord {
  /** Time since its last transition (or redrive), by the database's clock. */
  readonly ageMs: number;
  /** `updated_at` exactly as stored (text, microseconds): what a redrive claims (`claimRedrive`). */
  readonly stamp: string;
}

/** A page of the reconciler's work list: agents not DESTROYED or REJECTED, by id after `afterId`. */
export async function listLiveAgents(pool: Pool, afterId: string | null, limit: number): Promise<ObservedRecord[]> {
  // The age is the database's (`now()`), the clock that wrote `updated_at`.
  const { rows } = await pool.query<AgentRow & { age_ms: number; stamp: string }>(
    `SELECT ${COLUMNS}, (extract(epoch FROM now() - updated_at) * 1000)::float8 AS age_ms, updated_at::text AS stamp FROM agents
     WHERE state NOT IN ('DESTROYED', 'REJECTED') AND ($1::uuid IS NULL OR id > $1::uuid) ORDER BY id LIMIT $2`,
    [afterId, limit],
  );
  return rows.map((row) => ({ ...toRecord(row), ageMs: row.age_ms, stamp: row.stamp }));
}

/**
 * Claims a redrive of the agent exactly as the reconciler saw it (same version, same `updated_at`)
 * and locks its row until the transaction ends; `updated_at` moves to now, so the agent is no longer
 * stuck and a second redrive decided on the same view (another leader's) finds nothing to claim.
 * Returns the agent, or undefined when it changed since.
 */
export async function claimRedrive(client: PoolClient, agentId: string, version: number, stamp: string): Promise<AgentRecord | undefined> {
  const { rows } = await client.query<AgentRow>(
    `UPDATE agents SET updated_at = now() WHERE id = $1 AND version = $2 AND updated_at = $3::timestamptz RETURNING ${COLUMNS}`,
    [agentId, version, stamp],
  );
  return rows[0] ? toRecord(rows[0]) : undefined;
}

export async function knownAgentIds(pool: Pool, ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const { rows } = await pool.query<{ id: string }>(`SELECT id FROM agents WHERE id = ANY($1::uuid[]) AND state <> 'DESTROYED'`, [ids]);
  return new Set(rows.map((r) => r.id));
}

/** Locks the agents' rows (in id order, so two batches never deadlock) until the transaction ends. */
export async function lockAgents(client: PoolClient, agentIds: readonly string[]): Promise<Map<string, AgentRecord>> {
  if (agentIds.length === 0) return new Map();
  const { rows } = await client.query<AgentRow>(`SELECT ${COLUMNS} FROM agents WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE`, [agentIds]);
  return new Map(rows.map((row) => [row.id, toRecord(row)]));
}

/** Records commands as applied in one statement; returns the ids not applied before. */
export async function markCommandsApplied(client: PoolClient, commands: readonly { commandId: string; agentId: string }[]): Promise<Set<string>> {
  if (commands.length === 0) return new Set();
  const { rows } = await client.query<{ command_id: string }>(
    `INSERT INTO applied_commands (command_id, agent_id) SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING RETURNING command_id`,
    [commands.map((c) => c.commandId), commands.map((c) => c.agentId)],
  );
  return new Set(rows.map((r) => r.command_id));
}

/** Takes back commands marked in this transaction whose application was put off (a later round of the batch). */
export async function unmarkCommands(client: PoolClient, commandIds: readonly string[]): Promise<void> {
  if (commandIds.length > 0) await client.query('DELETE FROM applied_commands WHERE command_id = ANY($1::uuid[])', [commandIds]);
}

/** New agents' rows in one statement. */
export async function insertAgents(client: PoolClient, agents: readonly NewAgent[]): Promise<void> {
  if (agents.length === 0) return;
  await client.query(
    `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, last_request_id, last_command_id)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::text[], $8::jsonb[], $9::bigint[], $10::uuid[], $11::uuid[])`,
    [
      agents.map((a) => a.id),
      agents.map((a) => a.snapshot.state),
      agents.map((a) => a.snapshot.reason),
      agents.map((a) => JSON.stringify(a.spec)),
      agents.map((a) => JSON.stringify(lifecycleColumn(a.snapshot))),
      agents.map((a) => a.division),
      agents.map((a) => a.region),
      agents.map((a) => JSON.stringify(a.labels)),
      agents.map((a) => a.version),
      agents.map((a) => a.requestId),
      agents.map((a) => a.commandId),
    ],
  );
}

export interface AgentUpdate {
  readonly agentId: string;
  readonly expectedVersion: number;
  readonly newVersion: number;
  readonly snapshot: AgentSnapshot;
  readonly requestId: string | null;
  readonly commandId: string | null;
}

/** Version-checked updates in one statement, each agent's own check kept: one lost race fails them all (retryable). */
export async function updateAgents(client: PoolClient, updates: readonly AgentUpdate[]): Promise<void> {
  if (updates.length === 0) return;
  const { rows } = await client.query<{ id: string }>(
    `UPDATE agents AS a SET state = u.state, reason = u.reason, lifecycle = u.lifecycle, version = u.new_version, updated_at = now(),
       last_request_id = COALESCE(u.request_id, a.last_request_id), last_command_id = COALESCE(u.command_id, a.last_command_id)
     FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::uuid[], $8::uuid[])
       AS u(id, expected, new_version, state, reason, lifecycle, request_id, command_id)
     WHERE a.id = u.id AND a.version = u.expected
     RETURNING a.id`,
    [
      updates.map((u) => u.agentId),
      updates.map((u) => u.expectedVersion),
      updates.map((u) => u.newVersion),
      updates.map((u) => u.snapshot.state),
      updates.map((u) => u.snapshot.reason),
      updates.map((u) => JSON.stringify(lifecycleColumn(u.snapshot))),
      updates.map((u) => u.requestId),
      updates.map((u) => u.commandId),
    ],
  );
  if (rows.length !== updates.length) {
    const updated = new Set(rows.map((r) => r.id));
    const lost = updates.filter((u) => !updated.has(u.agentId)).map((u) => u.agentId);
    throw retryableError('VERSION_CONFLICT', `agents ${lost.join(', ')} changed concurrently`);
  }
}
