/**
 * One request, from either door (the `agent-requests` worker or the HTTPS API), decided and
 * recorded in ONE Postgres transaction (the API's own per request, the worker's per Kafka batch, see
 * handler.ts): the request row and its outgoing events (status, command, audit) through the outbox,
 * so they are published if and only if the decision is stored. The common cases (a new key, a
 * repeat, a conflict, a reused requestId) take one statement (FIRST_LOOK) besides the outbox's.
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
export function classifyDatabaseError(error: unknown): unknown {
  if (isAppError(error)) return error;
  const sqlState = (error as { code?: unknown }).code;
  if (typeof sqlState === 'string' && /^2[23]/.test(sqlState) && sqlState !== '23505') {
    return permanentError('DATABASE_REJECTED', `Postgres refused the request's rows: ${errorMessage(error)}`, error, { sqlState });
  }
  return retryableError('DATABASE_UNAVAILABLE', `Postgres failed while processing the request: ${errorMessage(error)}`, error, typeof sqlState === 'string' ? { sqlState } : undefined);
}

/** The agent's row, else its accepted INSTANTIATE the provisioner has not materialized yet (PENDING at version 0, as its status said). */
const AGENT_VIEW = `
SELECT state, version::int8 AS version, division, true AS materialized FROM agents WHERE id = $1
UNION ALL
(SELECT 'PENDING', 0::int8, division, false FROM requests
 WHERE agent_id = $1 AND action = 'INSTANTIATE' AND outcome = 'ACCEPTED' AND NOT EXISTS (SELECT FROM agents WHERE id = $1) LIMIT 1)`;

interface AgentViewRow {
  state: AgentState;
  version: string | number;
  division: string;
  materialized: boolean;
}

const viewOf = (row: AgentViewRow | null | undefined): AgentView | null => (row ? { state: row.state, version: Number(row.version), division: row.division } : null);

async function agentView(client: PoolClient, agentId: string): Promise<AgentView | null> {
  return viewOf((await client.query<AgentViewRow>(AGENT_VIEW, [agentId])).rows[0]);
}

/**
 * The common cases in ONE statement, under the key's lock: the stored request under the key, a
 * request already using the requestId, the subject agent's view, and the new request row, inserted
 * only when neither request exists and `$14` (what the decision made in memory assumed) holds:
 * `none` (a rejection decided from the request alone), `no-agent` (an INSTANTIATE whose agent row
 * must not exist) or `in-division` (an action on an agent that must exist in the request's division).
 * Its snapshot predates the lock, so a request committed while it waited can be missed: nothing is
 * inserted then (ON CONFLICT), and the caller decides again with fresh statements.
 */
const FIRST_LOOK = `
WITH locked AS (SELECT pg_advisory_xact_lock($1::int, hashtext($2::text))),
seen AS (
  SELECT request_id, idempotency_key, payload_hash, action, agent_id, division, outcome, reason, command_id
  FROM requests WHERE requested_by = $3::text AND idempotency_key = $4::text AND EXISTS (SELECT FROM locked)
),
same_id AS (SELECT idempotency_key, requested_by FROM requests WHERE request_id = $5::uuid),
agent AS (SELECT state, version::int8 AS version, division, true AS materialized FROM agents WHERE id = $6::uuid),
view AS (
  SELECT * FROM agent
  UNION ALL
  (SELECT 'PENDING', 0::int8, division, false FROM requests
   WHERE agent_id = $6::uuid AND action = 'INSTANTIATE' AND outcome = 'ACCEPTED' AND NOT EXISTS (SELECT FROM agent) LIMIT 1)
),
inserted AS (
  INSERT INTO requests (request_id, idempotency_key, payload_hash, action, agent_id, division, requested_by, outcome, reason, command_id)
  SELECT $5::uuid, $4::text, $7::text, $8::text, $9::uuid, $10::text, $3::text, $11::text, $12::text, $13::uuid
  WHERE NOT EXISTS (SELECT FROM seen) AND NOT EXISTS (SELECT FROM same_id)
    AND CASE $14::text
      WHEN 'none' THEN true
      WHEN 'no-agent' THEN NOT EXISTS (SELECT FROM agent)
      ELSE EXISTS (SELECT FROM view WHERE division = $10::text)
    END
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT EXISTS (SELECT FROM inserted) AS inserted,
  (SELECT row_to_json(seen) FROM seen) AS seen,
  (SELECT row_to_json(same_id) FROM same_id) AS same_id,
  (SELECT row_to_json(view) FROM view LIMIT 1) AS view`;

interface FirstLook {
  inserted: boolean;
  seen: RequestRow | null;
  same_id: { idempotency_key: string; requested_by: string } | null;
  view: AgentViewRow | null;
}

type Decision =
  | { readonly outcome: 'ACCEPTED'; readonly status: Pick<AgentStatus, 'state' | 'previousState' | 'version'> }
  | { readonly outcome: 'REJECTED'; readonly code: RejectionCode; readonly explanation: string };

/** What can be decided from the request alone (validation, the identity's rights on the request's division), before any read. */
type Plan = { readonly outcome: 'ACCEPTED'; readonly requires: 'no-agent' | 'in-division' } | { readonly outcome: 'REJECTED'; readonly code: RejectionCode; readonly explanation: string };

function plan(request: AgentRequest, identity: string, deps: ProcessDeps): Plan {
  const validation = validateRequest(request, deps.rules);
  if (!validation.ok) return { outcome: 'REJECTED', code: validation.code, explanation: validation.reason };
  const allowed = authorizeAction(deps.authz, identity, request.action, [request.division]);
  if (!allowed.allowed) return { outcome: 'REJECTED', code: allowed.code, explanation: allowed.reason };
  // Acting on an agent of the request's division needs no other right than the one just checked.
  return { outcome: 'ACCEPTED', requires: request.action === 'INSTANTIATE' ? 'no-agent' : 'in-division' };
}

async function decide(client: PoolClient, request: AgentRequest, identity: string, subject: string, deps: ProcessDeps): Promise<Decision> {
  const reject = (code: RejectionCode, explanation: string): Decision => ({ outcome: 'REJECTED', code, explanation });
  const planned = plan(request, identity, deps);
  if (planned.outcome === 'REJECTED') return planned;

  if (request.action === 'INSTANTIATE') {
    const existing = await client.query('SELECT 1 FROM agents WHERE id = $1', [subject]);
    if ((existing.rowCount ?? 0) > 0) return reject('AGENT_EXISTS', `agent ${subject} (derived from idempotency key ${JSON.stringify(request.idempotencyKey)}) already exists`);
    return { outcome: 'ACCEPTED', status: { state: 'PENDING', previousState: null, version: 0 } };
  }

  const agent = await agentView(client, subject);
  return decideOnAgent(request, identity, subject, agent, deps);
}

/** The decision on an action on an existing agent, the request itself being valid and allowed in its division. */
function decideOnAgent(request: AgentRequest, identity: string, subject: string, agent: AgentView | null, deps: ProcessDeps): Decision {
  const reject = (code: RejectionCode, explanation: string): Decision => ({ outcome: 'REJECTED', code, explanation });
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
 * `agentOf` reads an agent's view (the subject's is known already).
 */
async function authorizeRepeat(request: AgentRequest, identity: string, original: RequestRow, deps: ProcessDeps, agentOf: (id: string) => Promise<AgentView | null>): Promise<AuthzDecision> {
  const onRequest = authorizeAction(deps.authz, identity, request.action, [request.division]);
  if (!onRequest.allowed || request.action === 'INSTANTIATE' || original.agent_id === null) return onRequest;
  const agent = await agentOf(original.agent_id);
  return agent ? authorizeAction(deps.authz, identity, request.action, [agent.division]) : onRequest;
}

/** A decision and the events that publish it; the caller writes the events through the outbox in the same transaction. */
export interface DecidedRequest {
  readonly outcome: RequestOutcome;
  readonly events: readonly OutboxEvent[];
}

/**
 * Decides `request` on behalf of `identity` (its `requestedBy`, authenticated by the caller) inside
 * the caller's transaction (`client` in BEGIN) and stores the request row; see the module comment.
 * The events are returned, not written: the caller enqueues them (one outbox statement for many
 * requests). Usually one statement (FIRST_LOOK); rarer cases read and write with a few more.
 */
export async function decideRequest(client: PoolClient, request: AgentRequest, identity: string, deps: ProcessDeps, options: ProcessOptions): Promise<DecidedRequest> {
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
  const base = { requestId: request.requestId, idempotencyKey: request.idempotencyKey, agentId: storedAgentId, replayed: false };

  /** A rejection's status (the agent's current state when ingest knows the agent, else REJECTED) and audit. */
  const rejectionEvents = (agent: AgentView | null, code: RejectionCode, reason: string, extra: Record<string, unknown>, time: Date): OutboxEvent[] => {
    const status = agent ? { state: agent.state, previousState: agent.state, version: agent.version } : { state: 'REJECTED' as const, previousState: null, version: 0 };
    return [statusEvent(status, reason, null, time), auditEvent('request.rejected', { ...auditBase, ...extra, outcome: 'REJECTED', code, reason }, time)];
  };
  const rejectUnstored = (agent: AgentView | null, code: RejectionCode, explanation: string, extra: Record<string, unknown> = {}): DecidedRequest => {
    const reason = formatReason(code, explanation);
    return {
      outcome: { ...base, outcome: 'REJECTED', commandId: null, code, reason, stored: false },
      events: rejectionEvents(agent, code, reason, { ...extra, stored: false }, now()),
    };
  };
  const rejectStored = (agent: AgentView | null, code: RejectionCode, explanation: string, time: Date): DecidedRequest => {
    const reason = formatReason(code, explanation);
    return { outcome: { ...base, outcome: 'REJECTED', commandId: null, code, reason, stored: true }, events: rejectionEvents(agent, code, reason, { stored: true }, time) };
  };
  const accept = (status: Pick<AgentStatus, 'state' | 'previousState' | 'version'>, commandId: string, time: Date): DecidedRequest => {
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
    return {
      outcome: { ...base, outcome: 'ACCEPTED', commandId, code: null, reason: '', stored: true },
      // The status first: a consumer of agent-status sees PENDING before anything the command causes.
      events: [
        statusEvent(status, ACCEPTED_REASON, commandId, time),
        { topic: deps.topics['agent-commands'], key: subject, value: command, eventId: commandId, trace },
        auditEvent('request.accepted', { ...auditBase, outcome: 'ACCEPTED', commandId, region: request.region, labels: request.labels, spec: request.spec }, time),
      ],
    };
  };
  /** A request under the key: the stored outcome again, or a conflict (neither goes to an identity that may no longer make this request). */
  const repeated = async (original: RequestRow, subjectView: AgentView | null): Promise<DecidedRequest> => {
    const allowed = await authorizeRepeat(request, identity, original, deps, (id) => (id === subject ? Promise.resolve(subjectView) : agentView(client, id)));
    if (!allowed.allowed) return rejectUnstored(subjectView, allowed.code, allowed.reason, { repeatOf: original.request_id });
    if (original.payload_hash === payloadHash) return { outcome: outcomeFromRow(original, true), events: [] };
    return rejectUnstored(
      subjectView,
      'IDEMPOTENCY_CONFLICT',
      `idempotency key ${JSON.stringify(request.idempotencyKey)} was already used by request ${original.request_id} with a different payload; use a new key for a different request`,
      { conflictsWith: original.request_id },
    );
  };
  /** Another identity's key stays its own. */
  const duplicateId = (taken: { idempotency_key: string; requested_by: string }, subjectView: AgentView | null): DecidedRequest => {
    const usedWith = taken.requested_by === identity ? `with idempotency key ${JSON.stringify(taken.idempotency_key)}` : 'by another identity';
    return rejectUnstored(subjectView, 'DUPLICATE_REQUEST_ID', `requestId ${request.requestId} was already used ${usedWith}`);
  };

  try {
    if (!isUsableIdempotencyKey(request.idempotencyKey)) {
      const validation = validateRequest(request, deps.rules);
      return rejectUnstored(await agentView(client, subject), 'VALIDATION_FAILED', validation.ok ? 'idempotencyKey is not usable' : validation.reason);
    }
    const planned = plan(request, identity, deps);
    const time = now();
    const commandId = planned.outcome === 'ACCEPTED' ? randomUUID() : null;
    const plannedReason = planned.outcome === 'REJECTED' ? formatReason(planned.code, planned.explanation) : '';
    // Named: parsed and planned once per connection, not per request.
    const first = await client.query<FirstLook>({ name: 'ingest-first-look', text: FIRST_LOOK }, [
      IDEMPOTENCY_LOCK_CLASS,
      JSON.stringify([identity, request.idempotencyKey]),
      identity,
      request.idempotencyKey,
      request.requestId,
      subject,
      payloadHash,
      request.action,
      storedAgentId,
      request.division,
      planned.outcome,
      plannedReason,
      commandId,
      planned.outcome === 'ACCEPTED' ? planned.requires : 'none',
    ]);
    const look = first.rows[0];
    if (look === undefined) throw retryableError('DATABASE_UNAVAILABLE', 'Postgres answered the request lookup with no row');
    const subjectView = viewOf(look.view);
    if (look.inserted) {
      if (planned.outcome === 'REJECTED') return rejectStored(subjectView, planned.code, planned.explanation, time);
      const status = planned.requires === 'no-agent' ? { state: 'PENDING' as const, previousState: null, version: 0 } : { state: subjectView?.state ?? 'PENDING', previousState: subjectView?.state ?? 'PENDING', version: subjectView?.version ?? 0 };
      return accept(status, commandId ?? randomUUID(), time);
    }
    if (look.seen) return await repeated(look.seen, subjectView);
    if (look.same_id) return duplicateId(look.same_id, subjectView);
    // The agent is not as planned (it exists, is unknown or elsewhere), or a request committed while
    // this one waited for the lock: decided again with fresh statements (the lock is held).
    return await decideFresh(time);
  } catch (error) {
    throw classifyDatabaseError(error);
  }

  async function decideFresh(time: Date): Promise<DecidedRequest> {
    const seen = await client.query<RequestRow>(
      'SELECT request_id, idempotency_key, payload_hash, action, agent_id, division, outcome, reason, command_id FROM requests WHERE requested_by = $1 AND idempotency_key = $2',
      [identity, request.idempotencyKey],
    );
    const original = seen.rows[0];
    if (original) return repeated(original, await agentView(client, subject));
    const sameId = await client.query<{ idempotency_key: string; requested_by: string }>('SELECT idempotency_key, requested_by FROM requests WHERE request_id = $1', [request.requestId]);
    const taken = sameId.rows[0];
    if (taken) return duplicateId(taken, await agentView(client, subject));

    const decision = await decide(client, request, identity, subject, deps);
    const insertRow = (outcome: 'ACCEPTED' | 'REJECTED', reason: string, commandId: string | null) =>
      client.query(
        `INSERT INTO requests (request_id, idempotency_key, payload_hash, action, agent_id, division, requested_by, outcome, reason, command_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
        [request.requestId, request.idempotencyKey, payloadHash, request.action, storedAgentId, request.division, request.requestedBy, outcome, reason, commandId],
      );
    if (decision.outcome === 'REJECTED') {
      const reason = formatReason(decision.code, decision.explanation);
      await insertRow('REJECTED', reason, null);
      return rejectStored(await agentView(client, subject), decision.code, decision.explanation, time);
    }
    const commandId = randomUUID();
    await insertRow('ACCEPTED', '', commandId);
    return accept(decision.status, commandId, time);
  }
}

/**
 * Decides `request` on behalf of `identity` and records it with its events, in one transaction of
 * its own (the API's door; the Kafka worker decides a batch in one transaction, see handler.ts).
 */
export async function processRequest(request: AgentRequest, identity: string, deps: ProcessDeps, options: ProcessOptions): Promise<RequestOutcome> {
  try {
    return await withTransaction(deps.pool, async (client) => {
      const decided = await decideRequest(client, request, identity, deps, options);
      if (decided.events.length > 0) await enqueueEvents(client, deps.codec, decided.events);
      return decided.outcome;
    });
  } catch (error) {
    throw classifyDatabaseError(error);
  }
}
