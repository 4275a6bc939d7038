/**
 * One error taxonomy for the whole project: every error that crosses a boundary carries a stable
 * `code` and says whether retrying can help. Checks use the `code`/brand, never `instanceof`, so two
 * loaded copies of this module still agree.
 */
export interface ErrorDetails {
  readonly retryable: boolean;
  /**
   * Set when the failure means a dependency is down, not that the input is bad (see `unavailableError`):
   * the runtime then holds the record and retries it for as long as it takes, never dead-letters it.
   */
  readonly dependency?: string;
  readonly cause?: unknown;
  /** Extra fields for logs and DLQ headers; never put secrets here. */
  readonly context?: Readonly<Record<string, unknown>>;
}

const BRAND = Symbol.for('agent-manager.AppError');

export class AppError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly context: Readonly<Record<string, unknown>>;
  readonly dependency: string | undefined;
  readonly [BRAND] = true;

  constructor(code: string, message: string, details: ErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'AppError';
    this.code = code;
    this.retryable = details.retryable;
    this.context = details.context ?? {};
    this.dependency = details.dependency;
  }
}

export function isAppError(value: unknown): value is AppError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** A failure that may succeed later (a server not up yet, a timeout, a lost connection). */
export function retryableError(code: string, message: string, cause?: unknown, context?: Record<string, unknown>): AppError {
  return new AppError(code, message, { retryable: true, cause, context });
}

/** A failure that will fail the same way every time (bad input, bad configuration). */
export function permanentError(code: string, message: string, cause?: unknown, context?: Record<string, unknown>): AppError {
  return new AppError(code, message, { retryable: false, cause, context });
}

/**
 * A dependency (database, registry, Redis, S3, Vault, OPA, Kafka…) did not answer: retryable, and
 * never the input's fault, so the runtime waits for the dependency instead of dead-lettering.
 */
export function unavailableError(dependency: string, code: string, message: string, cause?: unknown, context?: Record<string, unknown>): AppError {
  return new AppError(code, message, { retryable: true, dependency, cause, context });
}

/** Unknown errors are retryable by default: a bug that throws is retried, then dead-lettered. */
export function isRetryable(error: unknown): boolean {
  return isAppError(error) ? error.retryable : true;
}

export function errorCode(error: unknown): string {
  return isAppError(error) ? error.code : 'UNEXPECTED';
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// --- Is a dependency down? -------------------------------------------------------------------------
//
// Handlers throw what their clients throw (pg, ioredis, fetch, the AWS SDK, kafkajs), often wrapped in
// an AppError whose `cause` is the client's error. The classifier walks the cause chain: an explicit
// `dependency`, a code that always means "unavailable", or a client error that means the connection
// (not the query) failed. Anything else is the record's problem.

/** AppError codes (thrown by modules that predate `unavailableError`) that always mean a dependency is down. */
const UNAVAILABLE_CODES: Readonly<Record<string, string>> = {
  REGISTRY_UNAVAILABLE: 'registry',
  SCHEMA_REGISTRY_UNAVAILABLE: 'registry',
  VAULT_UNAVAILABLE: 'vault',
  VAULT_TIMEOUT: 'vault',
  KUBERNETES_UNREACHABLE: 'kubernetes',
  KUBERNETES_UNAVAILABLE: 'kubernetes',
  LEASE_API_UNAVAILABLE: 'kubernetes',
  LEASE_API_TIMEOUT: 'kubernetes',
};

/** Wrapping codes that say which dependency a connection-level cause belongs to. */
const CODE_HINTS: readonly (readonly [RegExp, string])[] = [
  [/^(DATABASE|DB|POSTGRES|PG)_/, 'postgres'],
  [/^(TIMER|REDIS|BULLMQ)_/, 'redis'],
  [/^(S3|AUDIT|ARCHIVE)_/, 's3'],
  [/^(POLICY|OPA)_/, 'opa'],
  [/^VAULT_/, 'vault'],
  [/^(REGISTRY|SCHEMA_REGISTRY)_/, 'registry'],
  [/^(KAFKA|PRODUCE|PUBLISH)_/, 'kafka'],
];

/** Socket-level failures: the other end is not there (yet). */
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

/** SQLSTATEs of a server going away or refusing connections (class 08, admin/crash shutdown, starting up, too many connections). */
const PG_UNAVAILABLE_STATE = /^(08...|57P0[123]|53300)$/;
const PG_CONNECTION_MESSAGE = /Connection terminated|not queryable|timeout exceeded when trying to connect|the database system is (starting up|shutting down|in recovery mode)/i;
const REDIS_CONNECTION_MESSAGE = /^Connection is closed|Stream isn't writeable|Reached the max retries per request limit/;

interface ErrorShape {
  dependency?: unknown;
  name?: unknown;
  code?: unknown;
  message?: unknown;
  severity?: unknown;
  retriable?: unknown;
  $metadata?: { httpStatusCode?: unknown };
  status?: unknown;
  cause?: unknown;
}

/** The dependency a client error (not an AppError) says is down, `'network'` when only the socket tells, else undefined. */
function clientErrorDependency(error: ErrorShape): string | undefined {
  const code = typeof error.code === 'string' ? error.code : undefined;
  const name = typeof error.name === 'string' ? error.name : '';
  const message = typeof error.message === 'string' ? error.message : '';
  // pg's DatabaseError carries a severity and a SQLSTATE.
  if (typeof error.severity === 'string' && code !== undefined) return PG_UNAVAILABLE_STATE.test(code) ? 'postgres' : undefined;
  if (PG_CONNECTION_MESSAGE.test(message)) return 'postgres';
  if (name === 'MaxRetriesPerRequestError' || REDIS_CONNECTION_MESSAGE.test(message)) return 'redis';
  if (name.startsWith('KafkaJS')) return error.retriable === true || /Connection|Timeout|BrokerNotFound|NumberOfRetriesExceeded/.test(name) ? 'kafka' : undefined;
  // The AWS SDK (S3): a timeout or a 5xx/throttling answer.
  if (error.$metadata !== undefined) {
    const status = error.$metadata.httpStatusCode;
    return name === 'TimeoutError' || (typeof status === 'number' && (status >= 500 || status === 429)) || status === undefined ? 's3' : undefined;
  }
  if (name === 'TimeoutError') return 'network';
  if (code !== undefined && NETWORK_CODES.has(code)) return 'network';
  return undefined;
}

/**
 * The dependency whose unavailability caused `error` ('postgres', 'redis', 'registry', 's3', 'vault',
 * 'opa', 'kafka', 'kubernetes', or 'network' when only a socket error says so), or undefined when the
 * error is not an outage (bad input, a bug, a conflict). Pure: unit-tested without servers.
 */
export function unavailableDependency(error: unknown): string | undefined {
  let hint: string | undefined;
  let current: unknown = error;
  // Bounded: a cause chain is short, and a cyclic one must not loop.
  for (let depth = 0; depth < 8 && typeof current === 'object' && current !== null; depth++) {
    if (isAppError(current)) {
      if (!current.retryable) return undefined;
      if (current.dependency !== undefined) return current.dependency;
      const known = UNAVAILABLE_CODES[current.code];
      if (known !== undefined) return known;
      const code = current.code;
      hint ??= CODE_HINTS.find(([pattern]) => pattern.test(code))?.[1];
    } else {
      // Marked by the client wrapper that knows which server it talks to (lib/db/pool.ts).
      const marked = (current as ErrorShape).dependency;
      if (typeof marked === 'string') return marked;
      const found = clientErrorDependency(current);
      if (found !== undefined) return found === 'network' ? (hint ?? found) : found;
      // fetch wraps the socket error: TypeError('fetch failed', { cause }).
      if (hint === undefined && (current as ErrorShape).message === 'fetch failed') hint = 'network';
    }
    current = (current as ErrorShape).cause;
  }
  return undefined;
}
