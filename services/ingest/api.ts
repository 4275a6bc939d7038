/**
 * The HTTPS API of ingest for the Kernel, with mutual TLS.
 *
 * - TLS: `requestCert` + `rejectUnauthorized`: a client without a certificate signed by the
 *   configured CA fails the handshake and never reaches HTTP.
 * - Identity: the client certificate's subject CN, looked up in the identities configuration (the
 *   same document that authorizes `requestedBy` on Kafka). A CN with no entry gets 403 everywhere.
 * - `POST /v1/requests`: an AgentRequest as JSON, decided by the same `processRequest` as the Kafka
 *   path (so it writes the same request row and events). `requestId` is optional (generated),
 *   `createdAt` is set by the server (a value in the body is ignored), `requestedBy` is the
 *   certificate's identity: omit it or send the same value; another value is refused with 400
 *   REQUESTED_BY_MISMATCH (a client cannot act on behalf of someone else over the API).
 *   202 `{ requestId, agentId, commandId, outcome, replayed }` when accepted (also for a repeat by
 *   the same identity with the same key and payload, while it is still authorized), else the
 *   rejection as an error. Keys are per identity: another client's key is not a repeat.
 * - `GET /v1/agents/:id`, `GET /v1/agents?state=&division=&cursor=&limit=`, `GET /v1/requests/:id`:
 *   for identities with a reading role, limited to the divisions that role covers (others: 404).
 *   The list is ordered by (createdAt, agentId) with keyset pagination: `nextCursor` is opaque.
 *   `GET /v1/agents/:id` adds the agent's last heartbeat (`lastHeartbeat`, from the heartbeat
 *   service's Redis; null when none is recorded); when Redis cannot be read the agent is still
 *   answered, with `lastHeartbeat: null` and `lastHeartbeatError` saying why.
 * - `GET /v1/audit?agentId=&requestId=&action=&actor=&from=&to=&limit=&cursor=`: the audit index
 *   (lib/archive/index-store.ts `queryAuditIndex`, as `agent-manager audit query`), for identities
 *   with an `auditRead` role (others: 403), every division. `from` inclusive, `to` exclusive (ISO
 *   8601; a bare day is its midnight UTC); ordered by (time, eventId), keyset-paginated with
 *   `nextCursor`.
 * - Errors are `{ error: { code, message } }`: 400 invalid, 403 not allowed, 404 unknown,
 *   409 conflicting with an earlier request, 413 body too large, 429 over the identity's rate
 *   (with Retry-After), 503 when a dependency is down (retry later).
 * - Limits (`ApiLimits`): the body size, how long a connection may idle and a request may take to
 *   arrive (a slow client cannot hold sockets forever), and a rate per identity (the certificate's
 *   CN; counted in this process).
 */
import { randomUUID } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import rateLimit from '@fastify/rate-limit';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { QueryResultRow } from 'pg';
import { z } from 'zod';
import { AGENT_ACTIONS, AGENT_STATES, type AgentRequest } from '../../lib/contracts/types.ts';
import { errorCode, errorMessage, isAppError, permanentError, retryableError, type AppError } from '../../lib/errors.ts';
import type { LastHeartbeat } from '../../lib/heartbeat/last-heartbeat.ts';
import type { Logger } from '../../lib/logger.ts';
import { AUDIT_QUERY_MAX_LIMIT, decodeCursor as decodeAuditCursor, queryAuditIndex, type AuditIndexRow, type AuditQuery } from '../../lib/archive/index-store.ts';
import { ANY, isKnownIdentity, mayRead, mayReadAudit, readableDivisions } from './authz.ts';
import { isUuid } from './idempotency.ts';
import { countDecision, processRequest, type ProcessDeps, type RejectionCode, type RequestOutcome, type RequestRow } from './process-request.ts';
import { parseAgentRequestRecord } from './validation.ts';

export interface ApiTls {
  /** PEM private key of the server. */
  readonly key: string | Buffer;
  /** PEM certificate (chain) of the server. */
  readonly cert: string | Buffer;
  /** PEM CA certificate(s) that client certificates must be signed by. */
  readonly ca: string | Buffer;
}

export interface ApiLimits {
  /** Largest accepted request body in bytes (larger: 413). */
  readonly bodyLimitBytes: number;
  /** A socket idle this long is closed. */
  readonly connectionTimeoutMs: number;
  /** The whole request (headers and body) must arrive within this (else 408). */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  /** Requests one identity may make per window (more: 429 with Retry-After). */
  readonly rateLimitMax: number;
  readonly rateLimitWindowMs: number;
}

export const DEFAULT_API_LIMITS: ApiLimits = {
  bodyLimitBytes: 1024 * 1024,
  connectionTimeoutMs: 60_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 30_000,
  rateLimitMax: 1200,
  rateLimitWindowMs: 60_000,
};

export interface ApiOptions {
  readonly tls: ApiTls;
  readonly deps: ProcessDeps;
  readonly logger: Logger;
  /** Each one defaults to `DEFAULT_API_LIMITS`. */
  readonly limits?: Partial<ApiLimits>;
  /**
   * The last heartbeat of an agent (null when none is recorded), for `GET /v1/agents/:id`; it
   * should fail fast when its store is down (the agent is still answered, without it). Without
   * it, the field is null with HEARTBEAT_UNAVAILABLE.
   */
  readonly lastHeartbeat?: LastHeartbeatReader;
}

export type LastHeartbeatReader = (agentId: string) => Promise<LastHeartbeat | null>;

export type IngestApi = FastifyInstance<HttpsServer>;

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

/** HTTP status of each rejection. */
export const REJECTION_STATUS: Readonly<Record<RejectionCode, number>> = {
  VALIDATION_FAILED: 400,
  DIVISION_MISMATCH: 400,
  UNKNOWN_IDENTITY: 403,
  UNAUTHORIZED: 403,
  UNKNOWN_AGENT: 404,
  IDEMPOTENCY_CONFLICT: 409,
  AGENT_EXISTS: 409,
  DUPLICATE_REQUEST_ID: 409,
};

// -------------------------------------------------------------------------------------------------
// Bodies and queries (pure, unit-tested)

const specBodySchema = z.strictObject({
  template: z.string().nullable().default(null),
  image: z.string().nullable().default(null),
  command: z.array(z.string()).default([]),
  environment: z.array(z.strictObject({ name: z.string(), ref: z.string() })).default([]),
  resources: z.strictObject({
    cpuMillicores: z.int(),
    memoryMiB: z.int(),
    gpuCount: z.int().default(0),
    gpuType: z.string().nullable().default(null),
  }),
});

/** POST /v1/requests: the AgentRequest fields, with the Avro defaults filled (so the payload hash is the Kafka path's). */
export const requestBodySchema = z.strictObject({
  requestId: z.string().optional(),
  idempotencyKey: z.string(),
  action: z.enum(AGENT_ACTIONS),
  agentId: z.string().nullable().default(null),
  spec: specBodySchema.nullable().default(null),
  division: z.string(),
  region: z.string().nullable().default(null),
  labels: z.record(z.string(), z.string()).default({}),
  requestedBy: z.string().optional(),
  /** Ignored: the server stamps the request. */
  createdAt: z.unknown().optional(),
});

/**
 * A refusal with its HTTP status: a permanent AppError whose context carries `httpStatus` (and
 * extra fields for the error body).
 */
export function apiError(status: number, code: string, message: string, details: Record<string, unknown> = {}): AppError {
  return permanentError(code, message, undefined, { ...details, httpStatus: status });
}

function httpStatusOf(error: unknown): number | undefined {
  const status = isAppError(error) ? error.context.httpStatus : undefined;
  return typeof status === 'number' ? status : undefined;
}

const issuesOf = (error: z.ZodError) => error.issues.map((issue) => (issue.path.length === 0 ? issue.message : `${issue.path.map(String).join('.')}: ${issue.message}`));

/** The AgentRequest a POST body describes, on behalf of `identity`; throws a 400 `apiError` when it cannot be one. */
export function requestFromBody(body: unknown, identity: string, now: Date, newId: () => string = randomUUID): AgentRequest {
  const parsed = requestBodySchema.safeParse(body ?? undefined);
  if (!parsed.success) throw apiError(400, 'VALIDATION_FAILED', `invalid request body: ${issuesOf(parsed.error).join('; ')}`);
  const { requestedBy, createdAt: _ignored, requestId, ...fields } = parsed.data;
  if (requestedBy !== undefined && requestedBy !== identity) {
    throw apiError(400, 'REQUESTED_BY_MISMATCH', `requestedBy ${JSON.stringify(requestedBy)} differs from the identity of the client certificate (${JSON.stringify(identity)}); omit it or send the same value`);
  }
  const candidate = { ...fields, requestId: requestId ?? newId(), requestedBy: identity, createdAt: now };
  try {
    return parseAgentRequestRecord(candidate);
  } catch (error) {
    throw apiError(400, 'VALIDATION_FAILED', errorMessage(error));
  }
}

/** The HTTP answer to a decided request. */
export function outcomeResponse(outcome: RequestOutcome): { status: number; body: Record<string, unknown> } {
  const ids = { requestId: outcome.requestId, agentId: outcome.agentId, replayed: outcome.replayed };
  if (outcome.outcome === 'ACCEPTED') return { status: 202, body: { ...ids, outcome: 'ACCEPTED', commandId: outcome.commandId } };
  const code = outcome.code ?? 'VALIDATION_FAILED';
  const message = outcome.reason.startsWith(`${code}: `) ? outcome.reason.slice(code.length + 2) : outcome.reason;
  return { status: REJECTION_STATUS[code], body: { error: { code, message, ...ids } } };
}

export interface ListQuery {
  readonly state: string | undefined;
  readonly division: string | undefined;
  readonly cursor: Cursor | undefined;
  readonly limit: number;
}

export interface Cursor {
  /** created_at as Postgres text in UTC with microseconds. */
  readonly createdAt: string;
  readonly id: string;
}

const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify([cursor.createdAt, cursor.id])).toString('base64url');
}

/** The position a cursor names; undefined when it is not one this API made. */
export function decodeCursor(text: string): Cursor | undefined {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
    if (!Array.isArray(parsed) || parsed.length !== 2) return undefined;
    const [createdAt, id] = parsed as unknown[];
    if (typeof createdAt !== 'string' || !CURSOR_TIME.test(createdAt) || !isUuid(id)) return undefined;
    return { createdAt, id };
  } catch {
    return undefined;
  }
}

const listQuerySchema = z.strictObject({
  state: z.enum(AGENT_STATES, { error: `must be one of ${AGENT_STATES.join(', ')}` }).optional(),
  division: z.string().min(1).max(63).optional(),
  cursor: z.string().max(512).optional(),
  limit: z.coerce
    .number()
    .int({ error: 'must be a whole number' })
    .min(1, { error: 'must be at least 1' })
    .max(MAX_PAGE_SIZE, { error: `must be at most ${MAX_PAGE_SIZE}` })
    .default(DEFAULT_PAGE_SIZE),
});

export function parseListQuery(query: unknown): ListQuery {
  const parsed = listQuerySchema.safeParse(query ?? {});
  if (!parsed.success) throw apiError(400, 'INVALID_QUERY', `invalid query: ${issuesOf(parsed.error).join('; ')}`);
  let cursor: Cursor | undefined;
  if (parsed.data.cursor !== undefined && parsed.data.cursor !== '') {
    cursor = decodeCursor(parsed.data.cursor);
    if (!cursor) throw apiError(400, 'INVALID_CURSOR', 'cursor is not one this API returned (use nextCursor of the previous page as it is)');
  }
  return { state: parsed.data.state, division: parsed.data.division, cursor, limit: parsed.data.limit };
}

export const DEFAULT_AUDIT_PAGE_SIZE = 100;

const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** ISO 8601 with at least a day; a bare day is its midnight UTC (as `audit query --from`). */
const auditTime = z
  .string()
  .transform((text, ctx) => {
    const time = new Date(/^\d{4}-\d{2}-\d{2}$/.test(text) ? `${text}T00:00:00.000Z` : text);
    if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(time.getTime())) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(text)} is not a time (ISO 8601, e.g. 2026-12-01 or 2026-12-01T10:00:00Z)` });
      return z.NEVER;
    }
    return time;
  });

const auditQuerySchema = z.strictObject({
  agentId: z.string().regex(UUID_TEXT, { error: 'must be a uuid' }).optional(),
  requestId: z.string().regex(UUID_TEXT, { error: 'must be a uuid' }).optional(),
  action: z.string().min(1).max(128).optional(),
  actor: z.string().min(1).max(256).optional(),
  from: auditTime.optional(),
  to: auditTime.optional(),
  cursor: z.string().max(512).optional(),
  limit: z.coerce
    .number()
    .int({ error: 'must be a whole number' })
    .min(1, { error: 'must be at least 1' })
    .max(AUDIT_QUERY_MAX_LIMIT, { error: `must be at most ${AUDIT_QUERY_MAX_LIMIT}` })
    .default(DEFAULT_AUDIT_PAGE_SIZE),
});

/** The index query a `GET /v1/audit` query string asks for; throws a 400 `apiError` when it cannot be one. */
export function parseAuditQuery(query: unknown): AuditQuery {
  const parsed = auditQuerySchema.safeParse(query ?? {});
  if (!parsed.success) throw apiError(400, 'INVALID_QUERY', `invalid query: ${issuesOf(parsed.error).join('; ')}`);
  const { cursor, from, to, ...rest } = parsed.data;
  if (from !== undefined && to !== undefined && from.getTime() >= to.getTime()) {
    throw apiError(400, 'INVALID_QUERY', `invalid query: from (${from.toISOString()}) must be before to (${to.toISOString()})`);
  }
  const defined = Object.fromEntries(Object.entries({ ...rest, from, to }).filter(([, value]) => value !== undefined)) as AuditQuery;
  if (cursor === undefined || cursor === '') return defined;
  try {
    decodeAuditCursor(cursor);
  } catch {
    throw apiError(400, 'INVALID_CURSOR', 'cursor is not one this API returned (use nextCursor of the previous page as it is)');
  }
  return { ...defined, cursor };
}

export function auditEventJson(row: AuditIndexRow) {
  return {
    eventId: row.eventId,
    time: row.time.toISOString(),
    action: row.action,
    actor: row.actor,
    agentId: row.agentId,
    requestId: row.requestId,
    traceId: row.traceId,
    partition: row.partition,
    offset: row.offset,
    payloadHash: row.payloadHash,
    objectKey: row.objectKey,
  };
}

// -------------------------------------------------------------------------------------------------
// Rows as JSON

export interface AgentRow {
  id: string;
  state: string;
  reason: string;
  spec: unknown;
  lifecycle: unknown;
  division: string;
  region: string | null;
  labels: Record<string, string>;
  version: string;
  last_request_id: string | null;
  last_command_id: string | null;
  created_at: Date;
  updated_at: Date;
  cursor_time: string;
}

export const AGENT_COLUMNS = `id, state, reason, spec, lifecycle, division, region, labels, version, last_request_id, last_command_id, created_at, updated_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_time`;

/**
 * `agentJson` of a row, written by Postgres as JSON text (a list page: parsing 50 rows' JSON columns
 * and serializing them again was most of the route's CPU). Timestamps in milliseconds, as toISOString.
 */
export const AGENT_JSON_COLUMNS = `id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_time,
  json_build_object('agentId', id, 'state', state, 'reason', reason, 'division', division, 'region', region, 'labels', labels,
    'spec', spec, 'lifecycle', lifecycle, 'version', version, 'lastRequestId', last_request_id, 'lastCommandId', last_command_id,
    'createdAt', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'updatedAt', to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text AS item`;

export function agentJson(row: AgentRow) {
  return {
    agentId: row.id,
    state: row.state,
    reason: row.reason,
    division: row.division,
    region: row.region,
    labels: row.labels,
    spec: row.spec,
    lifecycle: row.lifecycle,
    version: Number(row.version),
    lastRequestId: row.last_request_id,
    lastCommandId: row.last_command_id,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

export function heartbeatJson(heartbeat: LastHeartbeat) {
  return {
    sentAt: heartbeat.sentAt.toISOString(),
    receivedAt: heartbeat.receivedAt.toISOString(),
    sequence: heartbeat.sequence,
    instance: heartbeat.instance,
    pid: heartbeat.pid,
    intervalMs: heartbeat.intervalMs,
    cpuPercent: heartbeat.cpuPercent,
    memoryRssBytes: heartbeat.memoryRssBytes,
    gauges: heartbeat.gauges,
  };
}

/**
 * `lastHeartbeat` and `lastHeartbeatError` of an agent's view: the heartbeat (null when none is
 * recorded), or null with the reason when the store cannot be read (the agent is answered anyway:
 * its row is the truth, the heartbeat an extra).
 */
export async function lastHeartbeatFields(reader: LastHeartbeatReader | undefined, agentId: string) {
  if (!reader) return { lastHeartbeat: null, lastHeartbeatError: { code: 'HEARTBEAT_UNAVAILABLE', message: 'this server reads no heartbeat store' } };
  try {
    const heartbeat = await reader(agentId);
    return { lastHeartbeat: heartbeat ? heartbeatJson(heartbeat) : null, lastHeartbeatError: null };
  } catch (error) {
    return { lastHeartbeat: null, lastHeartbeatError: { code: 'HEARTBEAT_UNAVAILABLE', message: `the last heartbeat could not be read: ${errorMessage(error)}` } };
  }
}

/** A `requests` row as the API shows it: who asked, and when. */
interface RequestRowShown extends RequestRow {
  requested_by: string;
  created_at: Date;
}

function requestJson(row: RequestRowShown) {
  const code = row.outcome === 'REJECTED' ? (/^([A-Z_]+): /.exec(row.reason)?.[1] ?? null) : null;
  return {
    requestId: row.request_id,
    idempotencyKey: row.idempotency_key,
    action: row.action,
    agentId: row.agent_id,
    division: row.division,
    requestedBy: row.requested_by,
    outcome: row.outcome,
    code,
    reason: code !== null ? row.reason.slice(code.length + 2) : row.reason,
    commandId: row.command_id,
    payloadHash: row.payload_hash,
    createdAt: row.created_at.toISOString(),
  };
}

// -------------------------------------------------------------------------------------------------
// The server

function sendError(reply: FastifyReply, error: AppError) {
  const { httpStatus, ...details } = error.context;
  return reply.code(typeof httpStatus === 'number' ? httpStatus : 500).send({ error: { code: error.code, message: error.message, ...details } });
}

/** The CN of the verified client certificate, or undefined. */
/**
 * The client certificate's CN, read once per TLS connection: the certificate cannot change on a
 * connection, and decoding it (`getPeerCertificate`) took 12% of the API's CPU under load.
 */
const commonNames = new WeakMap<TLSSocket, string | undefined>();

function peerCommonName(request: FastifyRequest): string | undefined {
  const socket = request.raw.socket as TLSSocket;
  if (typeof socket.getPeerCertificate !== 'function' || !socket.authorized) return undefined;
  if (commonNames.has(socket)) return commonNames.get(socket);
  const cn: unknown = socket.getPeerCertificate().subject?.CN;
  const name = Array.isArray(cn) ? (typeof cn[0] === 'string' ? cn[0] : undefined) : typeof cn === 'string' && cn !== '' ? cn : undefined;
  commonNames.set(socket, name);
  return name;
}

/** Builds the HTTPS server (not listening yet: call `listen`). */
export function buildApi(options: ApiOptions): IngestApi {
  const { deps } = options;
  const limits: ApiLimits = { ...DEFAULT_API_LIMITS, ...options.limits };
  const log = options.logger.child({ component: 'api' });
  const app: IngestApi = Fastify({
    https: { key: options.tls.key, cert: options.tls.cert, ca: options.tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
    logger: false,
    bodyLimit: limits.bodyLimitBytes,
    connectionTimeout: limits.connectionTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    return503OnClosing: true,
  });
  const identities = new WeakMap<FastifyRequest, string>();
  /** Reads: a failing Postgres is a 503 (retry later), not a 500. */
  const read = async <Row extends QueryResultRow>(sql: string, params: unknown[]): Promise<Row[]> => {
    try {
      return (await deps.pool.query<Row>(sql, params)).rows;
    } catch (error) {
      throw retryableError('DATABASE_UNAVAILABLE', `Postgres read failed: ${errorMessage(error)}`, error);
    }
  };
  const identityOf = (request: FastifyRequest): string => identities.get(request) ?? '';

  app.addHook('onRequest', async (request, reply) => {
    const cn = peerCommonName(request);
    if (cn === undefined) return sendError(reply, apiError(403, 'NO_CLIENT_IDENTITY', 'the client certificate has no subject CN'));
    if (!isKnownIdentity(deps.authz, cn)) return sendError(reply, apiError(403, 'UNKNOWN_IDENTITY', `identity ${JSON.stringify(cn)} (the client certificate's CN) is not configured`));
    identities.set(request, cn);
  });

  // Per identity, not per address: the Kernel's replicas may share one. The plugin's onRequest hook
  // runs after the identity check above (added first), so unknown CNs get 403 without a bucket.
  void app.register(rateLimit, {
    max: limits.rateLimitMax,
    timeWindow: limits.rateLimitWindowMs,
    keyGenerator: (request) => identities.get(request) ?? peerCommonName(request) ?? '',
    errorResponseBuilder: (request, context) =>
      apiError(429, 'RATE_LIMITED', `identity ${JSON.stringify(identities.get(request) ?? '')} made more than ${context.max} requests in ${limits.rateLimitWindowMs} ms; retry in ${context.after}`),
  });

  app.addHook('onResponse', async (request, reply) => {
    log.info({ method: request.method, url: request.url, status: reply.statusCode, identity: identities.get(request), ms: Math.round(reply.elapsedTime) }, 'api request');
  });

  /** For the read routes: the identity must have a reading role. */
  const requireReader = async (request: FastifyRequest, reply: FastifyReply) => {
    const identity = identityOf(request);
    const divisions = readableDivisions(deps.authz, identity);
    if (divisions !== ANY && divisions.length === 0) return sendError(reply, apiError(403, 'UNAUTHORIZED', `identity ${JSON.stringify(identity)} may not read agents or requests`));
  };

  /** For `GET /v1/audit`: the identity must have an audit-reading role. */
  const requireAuditReader = async (request: FastifyRequest, reply: FastifyReply) => {
    const identity = identityOf(request);
    if (!mayReadAudit(deps.authz, identity)) {
      return sendError(reply, apiError(403, 'UNAUTHORIZED', `identity ${JSON.stringify(identity)} may not read the audit trail (it needs a role with auditRead)`));
    }
  };

  app.setErrorHandler(async (error: unknown, request, reply) => {
    if (isAppError(error) && httpStatusOf(error) !== undefined) return sendError(reply, error);
    const status = (error as { statusCode?: unknown }).statusCode;
    if (status === 413) return sendError(reply, apiError(413, 'BODY_TOO_LARGE', `the request body is larger than ${limits.bodyLimitBytes} bytes`));
    if (typeof status === 'number' && status >= 400 && status < 500) {
      // Fastify's own refusals: malformed JSON, wrong content type, …
      const code = (error as { code?: unknown }).code;
      return sendError(reply, apiError(status, typeof code === 'string' ? code : 'BAD_REQUEST', errorMessage(error)));
    }
    if (isAppError(error) && error.retryable) {
      log.warn({ url: request.url, code: errorCode(error), err: errorMessage(error) }, 'dependency unavailable');
      void reply.header('retry-after', '5');
      return sendError(reply, apiError(503, 'UNAVAILABLE', 'a dependency of the service is unavailable; retry later with the same idempotency key'));
    }
    log.error({ url: request.url, code: errorCode(error), err: errorMessage(error) }, 'request failed');
    return sendError(reply, apiError(500, 'INTERNAL', 'the request failed unexpectedly; it is logged'));
  });

  app.setNotFoundHandler(async (request, reply) => sendError(reply, apiError(404, 'NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0] ?? ''}`)));

  // The routes are registered after the rate limiter has loaded (it attaches itself to routes as
  // they are added).
  void app.register(async (routes) => {
    routes.post('/v1/requests', async (request, reply) => {
      const identity = identityOf(request);
      const agentRequest = requestFromBody(request.body, identity, (deps.now ?? (() => new Date()))());
      const outcome = await processRequest(agentRequest, identity, deps, { source: 'api' });
      countDecision(deps, 'api', outcome);
      const answer = outcomeResponse(outcome);
      return reply.code(answer.status).send(answer.body);
    });

    routes.get('/v1/agents/:id', { preHandler: requireReader }, async (request, reply) => {
      const { id } = request.params as { id: string };
      if (!isUuid(id)) throw apiError(400, 'INVALID_ID', `agent id ${JSON.stringify(id)} is not a lower-case uuid`);
      const rows = await read<AgentRow>(`SELECT ${AGENT_COLUMNS} FROM agents WHERE id = $1`, [id]);
      const row = rows[0];
      if (!row || !mayRead(deps.authz, identityOf(request), row.division)) {
        throw apiError(404, 'AGENT_NOT_FOUND', `no agent ${id} (an accepted INSTANTIATE appears here once the provisioner has created the agent; GET /v1/requests/:requestId has the request's outcome)`);
      }
      return reply.send({ ...agentJson(row), ...(await lastHeartbeatFields(options.lastHeartbeat, row.id)) });
    });

    routes.get('/v1/agents', { preHandler: requireReader }, async (request, reply) => {
      const query = parseListQuery(request.query);
      const readable = readableDivisions(deps.authz, identityOf(request));
      if (query.division !== undefined && readable !== ANY && !readable.includes(query.division)) {
        throw apiError(403, 'UNAUTHORIZED', `identity ${JSON.stringify(identityOf(request))} may not read division ${JSON.stringify(query.division)}`);
      }
      const where: string[] = [];
      const params: unknown[] = [];
      const param = (value: unknown) => `$${params.push(value)}`;
      if (query.state !== undefined) where.push(`state = ${param(query.state)}`);
      if (query.division !== undefined) where.push(`division = ${param(query.division)}`);
      else if (readable !== ANY) where.push(`division = ANY(${param(readable)}::text[])`);
      if (query.cursor) where.push(`(created_at, id) > (${param(query.cursor.createdAt)}::timestamptz, ${param(query.cursor.id)}::uuid)`);
      const sql = `SELECT ${AGENT_JSON_COLUMNS} FROM agents ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT ${param(query.limit + 1)}`;
      const rows = await read<{ id: string; cursor_time: string; item: string }>(sql, params);
      const page = rows.slice(0, query.limit);
      const last = page.at(-1);
      const nextCursor = rows.length > query.limit && last ? encodeCursor({ createdAt: last.cursor_time, id: last.id }) : null;
      // The items are JSON already: sent as they are, not parsed and serialized again.
      return reply.type('application/json; charset=utf-8').send(`{"items":[${page.map((r) => r.item).join(',')}],"nextCursor":${JSON.stringify(nextCursor)}}`);
    });

    routes.get('/v1/audit', { preHandler: requireAuditReader }, async (request, reply) => {
      const query = parseAuditQuery(request.query);
      // A failing Postgres is AUDIT_INDEX_FAILED (retryable): the error handler answers 503.
      const page = await queryAuditIndex(deps.pool, query);
      return reply.send({ items: page.events.map(auditEventJson), nextCursor: page.nextCursor });
    });

    routes.get('/v1/requests/:id', { preHandler: requireReader }, async (request, reply) => {
      const { id } = request.params as { id: string };
      if (!isUuid(id)) throw apiError(400, 'INVALID_ID', `request id ${JSON.stringify(id)} is not a lower-case uuid`);
      const rows = await read<RequestRowShown>(
        'SELECT request_id, idempotency_key, payload_hash, action, agent_id, division, requested_by, outcome, reason, command_id, created_at FROM requests WHERE request_id = $1',
        [id],
      );
      const row = rows[0];
      if (!row || !mayRead(deps.authz, identityOf(request), row.division)) throw apiError(404, 'REQUEST_NOT_FOUND', `no request ${id}`);
      return reply.send(requestJson(row));
    });
  });

  return app;
}
