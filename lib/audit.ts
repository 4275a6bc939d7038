import { createHash, randomUUID } from 'node:crypto';
import type { AuditEvent } from './contracts/types.ts';

/**
 * Canonical JSON: object keys sorted, no whitespace, Dates as ISO strings. The same logical value
 * always yields the same bytes, so a hash over it can be recomputed by any verifier.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const sorted: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const field = (value as Record<string, unknown>)[key];
      if (field !== undefined) sorted[key] = sortKeys(field);
    }
    return sorted;
  }
  return value;
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export interface AuditInput {
  readonly actor: string;
  /** Dotted lower-case name, e.g. `agent.state_changed`. */
  readonly action: string;
  readonly agentId: string | null;
  readonly requestId: string | null;
  readonly traceId: string | null;
  readonly payload: Record<string, unknown>;
  readonly time?: Date;
  readonly eventId?: string;
}

/** An audit event whose `hash` is the SHA-256 of the canonical form of every other field. */
export function buildAuditEvent(input: AuditInput): AuditEvent {
  const unhashed: Omit<AuditEvent, 'hash'> = {
    eventId: input.eventId ?? randomUUID(),
    time: input.time ?? new Date(),
    actor: input.actor,
    action: input.action,
    agentId: input.agentId,
    requestId: input.requestId,
    traceId: input.traceId,
    payload: canonicalJson(input.payload),
  };
  return { ...unhashed, hash: auditHash(unhashed) };
}

export function auditHash(event: Omit<AuditEvent, 'hash'>): string {
  return sha256Hex(canonicalJson(event));
}
