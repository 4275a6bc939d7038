/**
 * What makes a request the same request: the agentId of a new agent, derived from the requesting
 * identity and its idempotency key, and the hash of the fields that define the request. Pure: no I/O.
 *
 * Idempotency keys are scoped to the identity that sends them: two identities using the same key
 * make two independent requests (and agents), so one cannot learn or pre-claim the other's.
 */
import { createHash } from 'node:crypto';
import { canonicalJson, sha256Hex } from '../../lib/audit.ts';
import type { AgentRequest } from '../../lib/contracts/types.ts';
import { permanentError } from '../../lib/errors.ts';

/**
 * The namespace of agentIds derived from (identity, idempotency key). Fixed forever, as is the name
 * `agentIdFor` builds: changing either would give a retried INSTANTIATE another agentId than its
 * first delivery (a stored request keeps its agentId, but its unstored rejections would not).
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

/**
 * The agentId of the agent an INSTANTIATE by `identity` with this idempotency key creates: the same
 * on every delivery. The name is the JSON array [identity, key], so no pair can spell another.
 */
export function agentIdFor(identity: string, idempotencyKey: string): string {
  return uuidV5(JSON.stringify([identity, idempotencyKey]), AGENT_ID_NAMESPACE);
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
