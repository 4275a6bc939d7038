/**
 * One error taxonomy for the whole project: every error that crosses a boundary carries a stable
 * `code` and says whether retrying can help. Checks use the `code`/brand, never `instanceof`, so two
 * loaded copies of this module still agree.
 */
export interface ErrorDetails {
  readonly retryable: boolean;
  readonly cause?: unknown;
  /** Extra fields for logs and DLQ headers; never put secrets here. */
  readonly context?: Readonly<Record<string, unknown>>;
}

const BRAND = Symbol.for('agent-manager.AppError');

export class AppError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly context: Readonly<Record<string, unknown>>;
  readonly [BRAND] = true;

  constructor(code: string, message: string, details: ErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'AppError';
    this.code = code;
    this.retryable = details.retryable;
    this.context = details.context ?? {};
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
