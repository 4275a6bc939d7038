/**
 * One request, from either door (the `agent-requests` worker or the HTTPS API), decided and
 * recorded in ONE Postgres transaction: the request row and its outgoing events (status, command,
 * audit) through the outbox, so they are published if and only if the decision is stored.
 *
 * Idempotency: a key belongs to the identity that sends it (the same key from two identities makes
 * two independent requests). Requests are serialized per (identity, key) (a transaction-scoped
 * advisory lock).
 * - key seen with the same payload hash: authorized again (the identity's roles may have been
 *   revoked since; refused like a new request, without the stored outcome), then the stored
 *   outcome is returned and nothing is written;
 * - key seen with another payload hash: authorized again, then rejected with IDEMPOTENCY_CONFLICT
 *   (status + audit), the original row is left as it is;
 * - new key: validated, authorized, stored with its outcome (ACCEPTED or REJECTED) and events.
 *
 * Rejections are outcomes, never errors: only an unavailable dependency (Postgres, the schema
 * registry) throws, retryably.
 */
import { randomUUID } from 'node:crypto';
import { buildAuditEvent } from '../../lib/audit.ts';
import type { AgentCommand, AgentRequest, AgentState, AgentStatus } from '../../lib/contracts/types.ts';
import { withTransaction, type Pool, type PoolClient } from '../../lib/db/pool.ts';
import type { Metrics } from '../../lib/metrics.ts';
import { errorMessage, isAppError, permanentError, retryableError } from '../../lib/errors.ts';
import type { AvroCodec } from '../../lib/kafka/avro.ts';
import { enqueueEvents, type OutboxEvent } from '../../lib/outbox/outbox.ts';
import type { TopicNames } from '../../lib/service/context.ts';
import { childTrace, type TraceContext } from '../../lib/tracing.ts';
import { authorizeAction, type AuthzDecision, type IdentitiesConfig } from './authz.ts';
import { agentIdFor, isUuid, requestPayloadHash } from './idempotency.ts';
import { isUsableIdempotencyKey, validateRequest, type ValidationRules } from './validation.ts';

export interface ProcessDeps {
  readonly pool: Pool;
  /** Encodes the outgoing events with the registered schemas of `topics`. */
  readonly codec: AvroCodec;
  readonly topics: TopicNames;
  readonly authz: IdentitiesConfig;
  readonly rules: ValidationRules;
  /** The clock (tests pin it). */
  readonly now?: () => Date;
  /** Counts decisions when present. */
  readonly metrics?: Pick<Metrics, 'requestsDecided'>;
}

/** Counts one decision (replays count too: they are answers). */
export function countDecision(deps: ProcessDeps, source: string, outcome: RequestOutcome): void {
  deps.metrics?.requestsDecided.inc({ source, outcome: outcome.outcome, code: outcome.code ?? '' });
}

export interface ProcessOptions {
  /** The caller's trace: the events continue it. A new trace when absent. */
  readonly trace?: TraceContext;
  /** Which door the request came through (recorded in the audit event). */
  readonly source: 'kafka' | 'api';
}

export const REJECTION_CODES = [
  'VALIDATION_FAILED',
  'UNKNOWN_IDENTITY',
  'UNAUTHORIZED',
  'IDEMPOTENCY_CONFLICT',
  'UNKNOWN_AGENT',
  'DIVISION_MISMATCH',
  'AGENT_EXISTS',
  'DUPLICATE_REQUEST_ID',
] as const;
export type RejectionCode = (typeof REJECTION_CODES)[number];

export interface RequestOutcome {
  readonly outcome: 'ACCEPTED' | 'REJECTED';
  /** The stored request's id: for a replay, the first request's id (the outcome is the first one's). */
  readonly requestId: string;
  readonly idempotencyKey: string;
  /** The agent the request is about; for INSTANTIATE the agentId derived from the identity and idempotency key. */
  readonly agentId: string | null;
  readonly commandId: string | null;
  /** Null when accepted. */
  readonly code: RejectionCode | null;
  /** `CODE: explanation` when rejected, '' when accepted. */
  readonly reason: string;
  /** True when this answer is the stored outcome of an earlier request with the same key and payload. */
  readonly replayed: boolean;
  /** False for rejections that are not remembered under the key (conflicts, unusable keys, reused requestIds). */
  readonly stored: boolean;
}

/** Advisory lock class of the per-key serialization (two-int lock space, apart from the relay's bigint lock). */
const IDEMPOTENCY_LOCK_CLASS = 0x1_4e57;

export const ACCEPTED_REASON = 'request accepted';

/** A row of `requests`, as ingest reads it. */
export interface RequestRow {
  request_id: string;
  idempotency_key: string;
  payload_hash: string;
  action: string;
  agent_id: string | null;
  division: string;
  outcome: 'ACCEPTED' | 'REJECTED';
  reason: string;
  command_id: string | null;
}

/** What ingest knows of an agent: its row, or the accepted INSTANTIATE the provisioner has not materialized yet. */
interface AgentView {
  readonly state: AgentState;
  readonly version: number;
  readonly division: string;
}

/** `CODE: explanation`, the form of every stored and published rejection reason. */
export function formatReason(code: RejectionCode, explanation: string): string {
  return `${code}: ${explanation}`;
}

/** The code of a stored rejection reason; null when it carries none. */
export function reasonCode(reason: string): RejectionCode | null {
  const code = /^([A-Z_]+): /.exec(reason)?.[1];
  return code !== undefined && (REJECTION_CODES as readonly string[]).includes(code) ? (code as RejectionCode) : null;
}

/**
 * The agentId events about this request are keyed by: the one derived from the identity and key
 * for INSTANTIATE (and for a request that names no valid agent), the request's agentId otherwise.
 */
export function subjectAgentId(request: AgentRequest, identity: string): string {
  if (request.action !== 'INSTANTIATE' && isUuid(request.agentId)) return request.agentId;
  return agentIdFor(identity, request.idempotencyKey);
}

function outcomeFromRow(row: RequestRow, replayed: boolean): RequestOutcome {
  return {
    outcome: row.outcome,
    requestId: row.request_id,
    idempotencyKey: row.idempotency_key,
    agentId: row.agent_id,
    commandId: row.command_id,
    code: row.outcome === 'REJECTED' ? (reasonCode(row.reason) ?? 'VALIDATION_FAILED') : null,
    reason: row.reason,
    replayed,
    stored: true,
  };
}

/** Postgres errors: bad data and constraint violations (except a unique race) fail the same way again. */
function classifyDatabaseError(error: unknown): unknown {
  if (isAppError(error)) return error;
  const sqlState = (error as { code?: unknown }).code;
  if (typeof sqlState === 'string' && /^2[23]/.test(sqlState) && sqlState !== '23505') {
    return permanentError('DATABASE_REJECTED', `Postgres refused the request's rows: ${errorMessage(error)}`, error, { sqlState });
  }
  return retryableError('DATABASE_UNAVAILABLE', `Postgres failed while processing the request: ${errorMessage(error)}`, error, typeof sqlState === 'string' ? { sqlState } : undefined);
}

async function agentView(client: PoolClient, agentId: string): Promise<AgentView | null> {
  const agents = await client.query<{ state: AgentState; version: string; division: string }>('SELECT state, version, division FROM agents WHERE id = $1', [agentId]);
  const agent = agents.rows[0];
  if (agent) return { state: agent.state, version: Number(agent.version), division: agent.division };
  // Accepted, not yet created by the provisioner: PENDING at version 0, as its status said.
  const pending = await client.query<{ division: string }>(
    "SELECT division FROM requests WHERE agent_id = $1 AND action = 'INSTANTIATE' AND outcome = 'ACCEPTED' LIMIT 1",
    [agentId],
  );
  const request = pending.rows[0];
  return request ? { state: 'PENDING', version: 0, division: request.division } : null;
}

type Decision =
  | { readonly outcome: 'ACCEPTED'; readonly status: Pick<AgentStatus, 'state' | 'previousState' | 'version'> }
  | { readonly outcome: 'REJECTED'; readonly code: RejectionCode; readonly explanation: string };

async function decide(client: PoolClient, request: AgentRequest, identity: string, subject: string, deps: ProcessDeps): Promise<Decision> {
  const reject = (code: RejectionCode, explanation: string): Decision => ({ outcome: 'REJECTED', code, explanation });
  const validation = validateRequest(request, deps.rules);
  if (!validation.ok) return reject(validation.code, validation.reason);
  const allowed = authorizeAction(deps.authz, identity, request.action, [request.division]);
  if (!allowed.allowed) return reject(allowed.code, allowed.reason);

  if (request.action === 'INSTANTIATE') {
    const existing = await client.query('SELECT 1 FROM agents WHERE id = $1', [subject]);
    if ((existing.rowCount ?? 0) > 0) return reject('AGENT_EXISTS', `agent ${subject} (derived from idempotency key ${JSON.stringify(request.idempotencyKey)}) already exists`);
    return { outcome: 'ACCEPTED', status: { state: 'PENDING', previousState: null, version: 0 } };
  }

  const agent = await agentView(client, subject);
  if (!agent) return reject('UNKNOWN_AGENT', `no agent ${subject}`);
  // Acting on an existing agent needs the right on the agent's own division as well.
  const onAgent = authorizeAction(deps.authz, identity, request.action, [agent.division]);
  if (!onAgent.allowed) return reject(onAgent.code, onAgent.reason);
  if (agent.division !== request.division) {
    return reject('DIVISION_MISMATCH', `agent ${subject} belongs to division ${JSON.stringify(agent.division)}, not ${JSON.stringify(request.division)}`);
  }
  // No transition happens here: the status acknowledges the request with the agent's current state.
  return { outcome: 'ACCEPTED', status: { state: agent.state, previousState: agent.state, version: agent.version } };
}

/**
 * Whether `identity` may still make a request it made before: the same checks as a new request's
 * (the action in the request's division and, for an existing agent, in the agent's division).
 */
async function authorizeRepeat(client: PoolClient, request: AgentRequest, identity: string, original: RequestRow, deps: ProcessDeps): Promise<AuthzDecision> {
  const onRequest = authorizeAction(deps.authz, identity, request.action, [request.division]);
  if (!onRequest.allowed || request.action === 'INSTANTIATE' || original.agent_id === null) return onRequest;
  const agent = await agentView(client, original.agent_id);
  return agent ? authorizeAction(deps.authz, identity, request.action, [agent.division]) : onRequest;
}

/**
 * Decides `request` on behalf of `identity` (its `requestedBy`, authenticated by the caller) and
 * records it; see the module comment.
 */
export async function processRequest(request: AgentRequest, identity: string, deps: ProcessDeps, options: ProcessOptions): Promise<RequestOutcome> {
  if (identity !== request.requestedBy) {
    throw permanentError('IDENTITY_MISMATCH', `request ${request.requestId} says requestedBy ${JSON.stringify(request.requestedBy)} but is decided for ${JSON.stringify(identity)}`);
  }
  const now = deps.now ?? (() => new Date());
  const trace = options.trace ?? childTrace();
  const payloadHash = requestPayloadHash(request);
  const subject = subjectAgentId(request, identity);
  const storedAgentId = request.action === 'INSTANTIATE' ? subject : isUuid(request.agentId) ? request.agentId : null;

  const statusEvent = (status: Pick<AgentStatus, 'state' | 'previousState' | 'version'>, reason: string, commandId: string | null, time: Date): OutboxEvent => {
    // Ingest does not know the running instance: null leaves the heartbeat service's record of it as is.
    const value: AgentStatus = { eventId: randomUUID(), agentId: subject, ...status, reason, requestId: request.requestId, commandId, time, instanceId: null };
    return { topic: deps.topics['agent-status'], key: subject, value, eventId: value.eventId, trace };
  };
  const auditEvent = (action: 'request.accepted' | 'request.rejected', payload: Record<string, unknown>, time: Date): OutboxEvent => {
    const value = buildAuditEvent({ actor: identity, action, agentId: subject, requestId: request.requestId, traceId: trace.traceId, payload, time });
    return { topic: deps.topics['audit-events'], key: subject, value, eventId: value.eventId, trace };
  };
  const auditBase = {
    source: options.source,
    idempotencyKey: request.idempotencyKey,
    action: request.action,
    division: request.division,
    requestedBy: request.requestedBy,
    payloadHash,
  };

  /** A rejection's status (the agent's current state when ingest knows the agent, else REJECTED) and audit. */
  async function rejectionEvents(client: PoolClient, code: RejectionCode, reason: string, extra: Record<string, unknown>, time: Date): Promise<OutboxEvent[]> {
    const agent = await agentView(client, subject);
    const status = agent ? { state: agent.state, previousState: agent.state, version: agent.version } : { state: 'REJECTED' as const, previousState: null, version: 0 };
    return [statusEvent(status, reason, null, time), auditEvent('request.rejected', { ...auditBase, ...extra, outcome: 'REJECTED', code, reason }, time)];
  }

  async function rejectUnstored(client: PoolClient, code: RejectionCode, explanation: string, extra: Record<string, unknown> = {}): Promise<RequestOutcome> {
    const reason = formatReason(code, explanation);
    await enqueueEvents(client, deps.codec, await rejectionEvents(client, code, reason, { ...extra, stored: false }, now()));
    return { outcome: 'REJECTED', requestId: request.requestId, idempotencyKey: request.idempotencyKey, agentId: storedAgentId, commandId: null, code, reason, replayed: false, stored: false };
  }

  try {
    return await withTransaction(deps.pool, async (client) => {
      if (!isUsableIdempotencyKey(request.idempotencyKey)) {
        const validation = validateRequest(request, deps.rules);
        return rejectUnstored(client, 'VALIDATION_FAILED', validation.ok ? 'idempotencyKey is not usable' : validation.reason);
      }
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [IDEMPOTENCY_LOCK_CLASS, JSON.stringify([identity, request.idempotencyKey])]);
      const seen = await client.query<RequestRow>(
        'SELECT request_id, idempotency_key, payload_hash, action, agent_id, division, outcome, reason, command_id FROM requests WHERE requested_by = $1 AND idempotency_key = $2',
        [identity, request.idempotencyKey],
      );
      const original = seen.rows[0];
      if (original) {
        // Neither the stored outcome nor the conflict (which names the stored request) goes to an
        // identity that may no longer make this request.
        const allowed = await authorizeRepeat(client, request, identity, original, deps);
        if (!allowed.allowed) return rejectUnstored(client, allowed.code, allowed.reason, { repeatOf: original.request_id });
        if (original.payload_hash === payloadHash) return outcomeFromRow(original, true);
        return rejectUnstored(
          client,
          'IDEMPOTENCY_CONFLICT',
          `idempotency key ${JSON.stringify(request.idempotencyKey)} was already used by request ${original.request_id} with a different payload; use a new key for a different request`,
          { conflictsWith: original.request_id },
        );
      }
      const sameId = await client.query<{ idempotency_key: string; requested_by: string }>('SELECT idempotency_key, requested_by FROM requests WHERE request_id = $1', [request.requestId]);
      const taken = sameId.rows[0];
      if (taken) {
        // Another identity's key stays its own.
        const usedWith = taken.requested_by === identity ? `with idempotency key ${JSON.stringify(taken.idempotency_key)}` : 'by another identity';
        return rejectUnstored(client, 'DUPLICATE_REQUEST_ID', `requestId ${request.requestId} was already used ${usedWith}`);
      }

      const decision = await decide(client, request, identity, subject, deps);
      const time = now();
      const insertRow = (outcome: 'ACCEPTED' | 'REJECTED', reason: string, commandId: string | null) =>
        client.query(
          `INSERT INTO requests (request_id, idempotency_key, payload_hash, action, agent_id, division, requested_by, outcome, reason, command_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
          [request.requestId, request.idempotencyKey, payloadHash, request.action, storedAgentId, request.division, request.requestedBy, outcome, reason, commandId],
        );
      const base = { requestId: request.requestId, idempotencyKey: request.idempotencyKey, agentId: storedAgentId, replayed: false, stored: true };

      if (decision.outcome === 'REJECTED') {
        const reason = formatReason(decision.code, decision.explanation);
        await insertRow('REJECTED', reason, null);
        await enqueueEvents(client, deps.codec, await rejectionEvents(client, decision.code, reason, { stored: true }, time));
        return { ...base, outcome: 'REJECTED', commandId: null, code: decision.code, reason };
      }

      const commandId = randomUUID();
      await insertRow('ACCEPTED', '', commandId);
      const instantiate = request.action === 'INSTANTIATE';
      const command: AgentCommand = {
        commandId,
        agentId: subject,
        command: request.action,
        requestId: request.requestId,
        spec: instantiate ? request.spec : null,
        division: request.division,
        region: instantiate ? request.region : null,
        labels: instantiate ? request.labels : {},
        issuedBy: request.requestedBy,
        issuedAt: time,
        reason: null,
        attempt: 1,
      };
      // The status first: a consumer of agent-status sees PENDING before anything the command causes.
      await enqueueEvents(client, deps.codec, [
        statusEvent(decision.status, ACCEPTED_REASON, commandId, time),
        { topic: deps.topics['agent-commands'], key: subject, value: command, eventId: commandId, trace },
        auditEvent('request.accepted', { ...auditBase, outcome: 'ACCEPTED', commandId, region: request.region, labels: request.labels, spec: request.spec }, time),
      ]);
      return { ...base, outcome: 'ACCEPTED', commandId, code: null, reason: '' };
    });
  } catch (error) {
    throw classifyDatabaseError(error);
  }
}
