/**
 * The one Vault client of the project: node-vault builds the requests (token and namespace headers,
 * paths) and turns Vault's answers into errors, through a small typed interface (node-vault's own
 * types are all `any`). Used by the KV v2 reads (lib/secrets.ts) and the Transit signer
 * (lib/signing/transit.ts). Nothing here logs, and no error message carries the token.
 */
import nodeVault from 'node-vault';
import { permanentError, retryableError, type AppError } from './errors.ts';

export interface VaultConnectionOptions {
  /** `VAULT_ADDR`, e.g. `https://vault.internal:8200`. */
  readonly address: string;
  readonly token: string;
  /** Enterprise namespace (`X-Vault-Namespace`). */
  readonly namespace?: string;
  /** Per request. Default 5 s. */
  readonly timeoutMs?: number;
  /** Test seam; default the global fetch. */
  readonly fetch?: typeof fetch;
}

/** The calls this project makes; answers are Vault's JSON bodies, to be validated by the caller. */
export interface VaultApi {
  /** `http(s)://host:port` of the server, for messages. */
  readonly origin: string;
  readonly timeoutMs: number;
  read(path: string): Promise<unknown>;
  write(path: string, body: Readonly<Record<string, unknown>>): Promise<unknown>;
  delete(path: string): Promise<unknown>;
}

/** What node-vault hands its transport (the `request-promise` seam), and what it expects back. */
interface TransportRequest {
  readonly method: string;
  readonly uri: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly json?: unknown;
}
interface TransportResponse {
  readonly statusCode: number;
  readonly body: unknown;
  readonly request: { readonly path: string };
}
/** node-vault's client, as far as it is used here. */
interface NodeVaultClient {
  namespace: string | undefined;
  pathPrefix: string;
  read(path: string): Promise<unknown>;
  write(path: string, data: unknown): Promise<unknown>;
  delete(path: string): Promise<unknown>;
}

/** A request that never got an answer: `timeout` (past `timeoutMs`) or `unreachable` (the socket's code). */
export class VaultTransportError extends Error {
  readonly kind: 'timeout' | 'unreachable';
  readonly code: string;
  constructor(kind: 'timeout' | 'unreachable', code: string) {
    super(kind === 'timeout' ? 'Vault did not answer in time' : `Vault unreachable (${code})`);
    this.name = 'VaultTransportError';
    this.kind = kind;
    this.code = code;
  }
}

/**
 * node-vault's transport, over fetch: redirects are refused (following one would send the token to
 * wherever it points; node-vault's default axios transport follows them and has no option to stop),
 * and a timeout is told apart from an unreachable server. The cause is dropped: it can quote the
 * request, with its token header.
 */
function fetchTransport(doFetch: typeof fetch, timeoutMs: number) {
  return async (request: TransportRequest): Promise<TransportResponse> => {
    const url = new URL(request.uri);
    const headers: Record<string, string> = { ...request.headers, Accept: 'application/json' };
    const hasBody = request.json !== undefined && request.json !== null && typeof request.json === 'object';
    if (hasBody) headers['Content-Type'] = 'application/json';
    let response: Response;
    try {
      response = await doFetch(url, {
        method: request.method,
        headers,
        ...(hasBody ? { body: JSON.stringify(request.json) } : {}),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'error',
      });
    } catch (error) {
      const name = (error as { name?: string }).name;
      if (name === 'TimeoutError' || name === 'AbortError') throw new VaultTransportError('timeout', 'TIMEOUT');
      throw new VaultTransportError('unreachable', (error as { cause?: { code?: string } }).cause?.code ?? 'network error');
    }
    const text = await response.text().catch(() => '');
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      // Not JSON (a proxy's error page): handed on as is, the caller finds no data in it.
      body = text;
    }
    return { statusCode: response.status, body, request: { path: url.pathname } };
  };
}

/** A node-vault client with this project's transport; throws CONFIG_INVALID naming VAULT_ADDR or VAULT_TOKEN. */
export function createVaultApi(options: VaultConnectionOptions): VaultApi {
  let base: URL;
  try {
    base = new URL(options.address);
  } catch (error) {
    throw permanentError('CONFIG_INVALID', 'invalid configuration:\n  VAULT_ADDR: expected a URL', error);
  }
  if (!options.token) throw permanentError('CONFIG_INVALID', 'invalid configuration:\n  VAULT_TOKEN: required (or set VAULT_TOKEN_FILE)');
  const timeoutMs = options.timeoutMs ?? 5_000;
  const transport = fetchTransport(options.fetch ?? fetch, timeoutMs);
  const client = nodeVault({
    endpoint: base.href.replace(/\/$/, ''),
    token: options.token,
    // node-vault's debug output would print request bodies; nothing of it is wanted.
    debug: () => undefined,
    'request-promise': { defaults: () => transport },
  }) as unknown as NodeVaultClient;
  // node-vault falls back to VAULT_NAMESPACE and VAULT_PREFIX from process.env: only the options count.
  client.namespace = options.namespace === '' ? undefined : options.namespace;
  client.pathPrefix = '';
  return {
    origin: base.origin,
    timeoutMs,
    read: (path) => client.read(path),
    write: (path, body) => client.write(path, body),
    delete: (path) => client.delete(path),
  };
}

/** What went wrong with a Vault call, for the caller to name in its own words. */
export type VaultFailure =
  | { readonly kind: 'timeout' }
  | { readonly kind: 'unreachable'; readonly code: string }
  | { readonly kind: 'status'; readonly status: number; readonly errors: string }
  | { readonly kind: 'other'; readonly message: string };

/** Classifies what a `VaultApi` call threw. `errors` is Vault's own error strings (they name no secret value), `: `-prefixed, or ''. */
export function vaultFailureOf(error: unknown): VaultFailure {
  if (error instanceof VaultTransportError) return error.kind === 'timeout' ? { kind: 'timeout' } : { kind: 'unreachable', code: error.code };
  const response = (error as { response?: { statusCode?: unknown; body?: unknown } } | null)?.response;
  if (response !== undefined && typeof response.statusCode === 'number') {
    const raw = (response.body as { errors?: unknown } | null | undefined)?.errors;
    const errors = Array.isArray(raw) ? raw.filter((e): e is string => typeof e === 'string') : [];
    return { kind: 'status', status: response.statusCode, errors: errors.length > 0 ? `: ${errors.join('; ').replace(/\s+/g, ' ').trim().slice(0, 300)}` : '' };
  }
  return { kind: 'other', message: error instanceof Error ? error.message : String(error) };
}

/**
 * The usual typed error for a failed Vault call: timeouts, unreachable servers, 429 and 5xx are
 * retryable; 403 and other 4xx permanent. `what` says what was being done ("signing with transit/x").
 */
export function vaultError(api: Pick<VaultApi, 'origin' | 'timeoutMs'>, error: unknown, what: string, context: Record<string, unknown> = {}): AppError {
  const failure = vaultFailureOf(error);
  switch (failure.kind) {
    case 'timeout':
      return retryableError('VAULT_TIMEOUT', `Vault did not answer within ${api.timeoutMs} ms ${what}`, undefined, context);
    case 'unreachable':
      return retryableError('VAULT_UNAVAILABLE', `Vault at ${api.origin} is unreachable ${what} (${failure.code})`, undefined, context);
    case 'status': {
      const { status, errors } = failure;
      if (status === 403) return permanentError('VAULT_FORBIDDEN', `Vault refused ${what} (403: the token lacks a policy for it, or expired)${errors}`, undefined, { ...context, status });
      if (status === 429 || status >= 500) return retryableError('VAULT_UNAVAILABLE', `Vault answered ${status} ${what}${errors}`, undefined, { ...context, status });
      return permanentError('VAULT_REQUEST_FAILED', `Vault answered ${status} ${what}${errors}`, undefined, { ...context, status });
    }
    case 'other':
      // node-vault's own failures (a malformed request); not the server's answer.
      return permanentError('VAULT_REQUEST_FAILED', `Vault request failed ${what}: ${failure.message}`, undefined, context);
  }
}
