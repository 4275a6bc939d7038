/**
 * What makes a request the same request: the agentId of a new agent, derived from the idempotency
 * key alone, and the hash of the fields that define the request. Pure: no I/O.
 */
import { createHash } from 'node:crypto';
import { canonicalJson, sha256Hex } from '../../lib/audit.ts';
import type { AgentRequest } from '../../lib/contracts/types.ts';
import { permanentError } from '../../lib/errors.ts';

/**
 * The namespace of agentIds derived from idempotency keys. Fixed forever: changing it would give a
 * retried INSTANTIATE another agentId than its first delivery.
 */
export const AGENT_ID_NAMESPACE = 'fe971498-ebbf-4efb-be15-29a282c922e9';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A canonical (lower-case, hyphenated) UUID. */
export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

/** RFC 9562 UUID version 5 (SHA-1, name-based) of `name` under `namespace`. */
export function uuidV5(name: string, namespace: string): string {
  if (!isUuid(namespace)) throw permanentError('INVALID_NAMESPACE', `namespace ${JSON.stringify(namespace)} is not a canonical UUID`);
  const bytes = createHash('sha1').update(Buffer.from(namespace.replace(/-/g, ''), 'hex')).update(name, 'utf8').digest().subarray(0, 16);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x50;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The agentId of the agent an INSTANTIATE with this idempotency key creates: the same on every delivery. */
export function agentIdFor(idempotencyKey: string): string {
  return uuidV5(idempotencyKey, AGENT_ID_NAMESPACE);
}

/** The fields that define a request; requestId and createdAt differ between retries of one request. */
export type RequestPayload = Pick<AgentRequest, 'action' | 'agentId' | 'spec' | 'division' | 'region' | 'labels' | 'requestedBy'>;

/**
 * SHA-256 (hex) of the canonical JSON of the defining fields. The same key with the same hash is a
 * retry (answered with the first outcome); the same key with another hash is a conflict.
 */
export function requestPayloadHash(request: RequestPayload): string {
  return sha256Hex(
    canonicalJson({
      action: request.action,
      agentId: request.agentId,
      spec: request.spec,
      division: request.division,
      region: request.region,
      labels: request.labels,
      requestedBy: request.requestedBy,
    }),
  );
}
