/**
 * What the Kubernetes API server said when a call failed. @kubernetes/client-node throws an
 * ApiException whose message is "HTTP-Code: 403\nMessage: Unknown API Status Code!\nBody: …" (the
 * generated client knows no status code but 200/201/401), so the explanation is in its `body`: the
 * server's `Status` object as JSON text, e.g. `{"reason":"Forbidden","message":"leases… is forbidden:
 * User \"system:serviceaccount:…\" cannot update resource \"leases\"…"}`.
 */
import { errorMessage } from './errors.ts';

export interface KubernetesFailure {
  /** The HTTP status, or undefined when no answer came (connection refused, timeout, TLS). */
  readonly httpStatus: number | undefined;
  /** The Status `reason` (Forbidden, NotFound, Conflict, AlreadyExists, Invalid…), when given. */
  readonly reason: string | undefined;
  /** The Status `message`, else the body as text, else the client's own message (all cut to 1,000 characters). */
  readonly message: string;
}

/** The HTTP status of a client-node error (ApiException.code), or undefined when no answer came. */
export function kubernetesHttpStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const e = error as { code?: unknown; statusCode?: unknown; status?: unknown; response?: { statusCode?: unknown } };
  for (const value of [e.code, e.statusCode, e.status, e.response?.statusCode]) {
    if (typeof value === 'number' && value >= 100 && value < 600) return value;
  }
  return undefined;
}

const LIMIT = 1_000;

export function kubernetesFailure(error: unknown): KubernetesFailure {
  const httpStatus = kubernetesHttpStatus(error);
  const body = typeof error === 'object' && error !== null ? (error as { body?: unknown }).body : undefined;
  let parsed: unknown = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = body;
    }
  }
  if (typeof parsed === 'object' && parsed !== null) {
    const status = parsed as { reason?: unknown; message?: unknown };
    const reason = typeof status.reason === 'string' && status.reason !== '' ? status.reason : undefined;
    if (typeof status.message === 'string' && status.message !== '') return { httpStatus, reason, message: status.message.slice(0, LIMIT) };
    if (reason !== undefined) return { httpStatus, reason, message: reason };
  }
  if (typeof parsed === 'string' && parsed.trim() !== '') return { httpStatus, reason: undefined, message: parsed.trim().slice(0, LIMIT) };
  // No body: a 401 (the client drops it), or no answer at all. The client's own first line says enough.
  const own = errorMessage(error);
  const short = /^HTTP-Code: \d+\nMessage: ([^\n]*)/.exec(own)?.[1] ?? own;
  return { httpStatus, reason: undefined, message: short.slice(0, LIMIT) };
}

/** `Forbidden: leases.coordination.k8s.io "x" is forbidden: …` (reason, then message), for error messages. */
export function describeKubernetesFailure(failure: KubernetesFailure): string {
  return failure.reason !== undefined && failure.message !== failure.reason && !failure.message.startsWith(failure.reason)
    ? `${failure.reason}: ${failure.message}`
    : failure.message;
}
