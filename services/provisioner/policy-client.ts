/**
 * The provisioner's policy decision point client. With a URL it asks SentinelNet (an OPA-compatible
 * Data API) and FAILS CLOSED: a timeout, a refused connection, a non-2xx status, a body that is not
 * a decision — each is a deny whose reason says why, never a thrown error and never a fallback to
 * the local rules. Without a URL it evaluates the local policy document in-process.
 *
 * The rules and the parsing live in ./policy.ts (pure); this file only adds the I/O.
 */
import { readFileSync } from 'node:fs';
import { errorMessage, permanentError } from '../../lib/errors.ts';
import {
  evaluateLocalPolicy,
  failClosed,
  parseLocalPolicy,
  parseRemoteDecision,
  toPolicyEngineInput,
  type DivisionUsage,
  type LocalPolicy,
  type PolicyDecision,
  type PolicyInput,
} from './policy.ts';

export const DEFAULT_POLICY_PATH = 'agentmanager/provisioning';
export const DEFAULT_POLICY_TIMEOUT_MS = 2000;

export interface PolicyDeciderOptions {
  /**
   * Base URL of the policy engine (SentinelNet, or the local stack's OPA: `OPA_URL`), e.g.
   * `http://127.0.0.1:18181`. When absent, `localPolicy` is evaluated in-process.
   */
  readonly url?: string | undefined;
  /** The decision's path under `/v1/data/`. Default `agentmanager/provisioning`. */
  readonly path?: string | undefined;
  /** Time allowed for the whole remote call (connect, answer, body). Default 2000 ms. */
  readonly timeoutMs?: number | undefined;
  /** The rules used when there is no `url` (see `loadLocalPolicyFile`). Never a fallback for a failed remote call. */
  readonly localPolicy?: LocalPolicy | undefined;
  /** The fetch implementation. Default: the global fetch; tests pass a fake. */
  readonly fetch?: typeof fetch | undefined;
}

export interface PolicyDecider {
  /** Where decisions come from: the remote engine (`url` set) or the local policy. */
  readonly source: PolicyDecision['source'];
  /** The decision for `input`, given what the division already holds. Never throws (fails closed). */
  decide(input: PolicyInput, usage: DivisionUsage): Promise<PolicyDecision>;
}

const PATH_SHAPE = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;
/** At most this much of an error body is quoted in a reason. */
const MAX_QUOTED = 200;

function invalidOption(option: string, message: string): never {
  throw permanentError('POLICY_CONFIG_INVALID', `policy decider option ${option}: ${message}`, undefined, { option });
}

/** Validates the options once; a bad combination fails at start-up, naming the option. */
function compileOptions(options: PolicyDeciderOptions) {
  const timeoutMs = options.timeoutMs ?? DEFAULT_POLICY_TIMEOUT_MS;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) invalidOption('timeoutMs', `expected a positive integer of milliseconds, got ${String(timeoutMs)}`);
  const path = (options.path ?? DEFAULT_POLICY_PATH).replace(/^\/+|\/+$/g, '');
  if (!PATH_SHAPE.test(path)) invalidOption('path', `expected slash-separated package/rule names such as ${DEFAULT_POLICY_PATH}, got ${JSON.stringify(options.path)}`);

  if (options.url !== undefined && options.url !== '') {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      return invalidOption('url', `expected an http(s) URL such as http://127.0.0.1:18181, got ${JSON.stringify(options.url)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') invalidOption('url', `expected an http or https URL, got ${url.protocol}`);
    if (url.search !== '' || url.hash !== '') invalidOption('url', 'expected a base URL without query or fragment');
    const endpoint = `${url.href.replace(/\/+$/, '')}/v1/data/${path}`;
    return { mode: 'remote' as const, endpoint, path, timeoutMs, fetch: options.fetch ?? globalThis.fetch };
  }
  if (options.localPolicy === undefined) {
    invalidOption('url/localPolicy', 'neither a policy engine URL nor a local policy was given: set one (see loadLocalPolicyFile)');
  }
  return { mode: 'local' as const, policy: parseLocalPolicy(options.localPolicy, 'policy decider option localPolicy') };
}

/** A system error's code (ECONNREFUSED, ENOENT…): the error's own, its cause's, or the first of an AggregateError's. */
function systemCode(error: unknown): string | undefined {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (typeof current === 'object' && current !== null && !seen.has(current)) {
    seen.add(current);
    const candidate = current as { code?: unknown; errors?: unknown; cause?: unknown };
    if (typeof candidate.code === 'string' && candidate.code !== '') return candidate.code;
    if (Array.isArray(candidate.errors) && candidate.errors.length > 0) {
      const inner = systemCode(candidate.errors[0]);
      if (inner !== undefined) return inner;
    }
    current = candidate.cause;
  }
  return undefined;
}

function errorName(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && typeof (error as { name?: unknown }).name === 'string' ? (error as { name: string }).name : undefined;
}

/** Why the call failed, in words an operator can act on. */
function describeFailure(error: unknown, endpoint: string, timeoutMs: number): string {
  const name = errorName(error);
  if (name === 'TimeoutError') return `timeout: no answer from the policy engine at ${endpoint} within ${timeoutMs} ms`;
  if (name === 'AbortError') return `the request to the policy engine at ${endpoint} was aborted`;
  const code = systemCode(error);
  switch (code) {
    case 'ECONNREFUSED':
      return `connection refused by the policy engine at ${endpoint}`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the policy engine's host cannot be resolved (${endpoint}, ${code})`;
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return `the policy engine at ${endpoint} closed the connection without a complete answer (${code})`;
    case 'ETIMEDOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return `timeout: no answer from the policy engine at ${endpoint} (${code})`;
    default: {
      const cause = (error as { cause?: unknown } | null)?.cause;
      const detail = cause === undefined ? errorMessage(error) : `${errorMessage(error)}: ${errorMessage(cause)}`;
      return `cannot reach the policy engine at ${endpoint}${code === undefined ? '' : ` (${code})`}: ${detail}`;
    }
  }
}

function quote(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > MAX_QUOTED ? `${flat.slice(0, MAX_QUOTED)}…` : flat;
}

/**
 * A decider over the options: remote (OPA Data API, `POST {url}/v1/data/{path}` with `{"input": …}`)
 * when `url` is set, the local policy otherwise. Invalid options throw a permanent
 * POLICY_CONFIG_INVALID here, at start-up; `decide` itself never throws.
 */
export function createPolicyDecider(options: PolicyDeciderOptions): PolicyDecider {
  const compiled = compileOptions(options);

  if (compiled.mode === 'local') {
    const { policy } = compiled;
    return {
      source: 'local',
      async decide(input, usage) {
        try {
          return evaluateLocalPolicy(input, usage, policy);
        } catch (error) {
          return failClosed(`the local policy could not be evaluated: ${errorMessage(error)}`, 'local');
        }
      },
    };
  }

  const { endpoint, path, timeoutMs, fetch: fetchImpl } = compiled;
  return {
    source: 'remote',
    async decide(input, usage) {
      let body: string;
      try {
        body = JSON.stringify({ input: toPolicyEngineInput(input, usage) });
      } catch (error) {
        return failClosed(`the request could not be built: ${errorMessage(error)}`);
      }
      // One deadline for the whole exchange: the signal also aborts reading the body.
      const signal = AbortSignal.timeout(timeoutMs);
      let status: number;
      let text: string;
      try {
        const response = await fetchImpl(endpoint, {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body,
          signal,
        });
        status = response.status;
        text = await response.text();
      } catch (error) {
        // The deadline is the only abort: whatever error the abort surfaced as, it is the timeout.
        return failClosed(describeFailure(signal.aborted ? signal.reason : error, endpoint, timeoutMs), 'remote', { unavailable: true });
      }
      if (status < 200 || status > 299) {
        // 5xx: the engine is down or overloaded; 4xx: it refuses this request (a wrong path, a bad input).
        return failClosed(`the policy engine at ${endpoint} answered HTTP ${status}${text.trim() === '' ? '' : `: ${quote(text)}`}`, 'remote', { unavailable: status >= 500 });
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return failClosed(`the policy engine at ${endpoint} answered a body that is not JSON: ${quote(text) || '(empty)'}`);
      }
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) && !('result' in parsed)) {
        // OPA answers `{}` for an undefined document: a wrong path, or the policy is not loaded.
        return failClosed(`the policy engine at ${endpoint} returned no result (is the policy loaded at ${path}?)`);
      }
      return parseRemoteDecision(parsed);
    },
  };
}

/**
 * Reads and validates a local policy document (e.g. `policies/local-policy.json`). A missing or
 * unreadable file, invalid JSON or a document that breaks the schema is a permanent
 * POLICY_CONFIG_INVALID whose message names the file.
 */
export function loadLocalPolicyFile(path: string): LocalPolicy {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = systemCode(error);
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : errorMessage(error);
    throw permanentError('POLICY_CONFIG_INVALID', `local policy file ${path} cannot be read: ${why}`, error, { file: path });
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw permanentError('POLICY_CONFIG_INVALID', `local policy file ${path} is not valid JSON: ${errorMessage(error)}`, error, { file: path });
  }
  return parseLocalPolicy(document, `local policy file ${path}`);
}
