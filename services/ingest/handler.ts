/**
 * The `agent-requests` worker handler. The runtime has decoded the record and checked its contract
 * (`parseAgentRequestRecord`, the worker's `validate`: a malformed record is dead-lettered there);
 * this decides the request with the identity it names (`requestedBy`; the topic itself is guarded
 * by Kafka ACLs). A rejection is an outcome (status + audit events, the record is committed), not
 * an error; an unavailable Postgres or registry throws retryably and the runtime retries.
 */
import type { AgentRequest } from '../../lib/contracts/types.ts';
import type { Handler } from '../../lib/runtime/worker.ts';
import { countDecision, processRequest, type ProcessDeps } from './process-request.ts';
import { parseAgentRequestRecord } from './validation.ts';

export type IngestDeps = ProcessDeps;

export const validateAgentRequestRecord = parseAgentRequestRecord;

export function createIngestHandler(): Handler<AgentRequest, IngestDeps> {
  return async (request, ctx) => {
    const outcome = await processRequest(request, request.requestedBy, ctx.deps, { trace: ctx.trace, source: 'kafka' });
    countDecision(ctx.deps, 'kafka', outcome);
    const log = ctx.log.child({ requestId: request.requestId, agentId: outcome.agentId ?? undefined });
    if (outcome.replayed) log.info({ outcome: outcome.outcome, idempotencyKey: request.idempotencyKey, originalRequestId: outcome.requestId }, 'repeated request: the stored outcome stands');
    else if (outcome.outcome === 'ACCEPTED') log.info({ action: request.action, commandId: outcome.commandId }, 'request accepted');
    else log.info({ action: request.action, code: outcome.code, reason: outcome.reason }, 'request rejected');
  };
}
