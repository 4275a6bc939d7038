/**
 * The deploy workflow's acceptance test of a freshly deployed environment, through the ingest API
 * (mTLS) as the Kernel uses it: instantiate one agent, wait for RUNNING, destroy it, wait for
 * DESTROYED. Release tooling (dev/): run by `agent-manager release acceptance`, never by a service.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, fetch } from 'undici';
import { errorMessage, permanentError } from '../../lib/errors.ts';

export interface AcceptanceOptions {
  /** The API's base URL, e.g. https://agent-manager.staging.internal:8443. */
  readonly api: string;
  /** PEM: the client certificate and key (an identity allowed INSTANTIATE, DESTROY and reads in `division`) and the API's CA. */
  readonly tls: { readonly cert: string; readonly key: string; readonly ca: string };
  readonly division: string;
  readonly region: string;
  /** What to run: a known template, or an image. */
  readonly spec: { readonly template: string } | { readonly image: string };
  /** The longest wait for each of RUNNING and DESTROYED. */
  readonly timeoutMs: number;
  readonly pollMs?: number;
  readonly log?: (line: string) => void;
}

export interface AcceptanceResult {
  readonly agentId: string;
  readonly runningAfterMs: number;
  readonly destroyedAfterMs: number;
}

/** States an agent never leaves by itself: waiting longer for another one is pointless. */
const DEAD_ENDS = new Set(['FAILED', 'REJECTED']);

const failed = (message: string, cause?: unknown) => permanentError('RELEASE_ACCEPTANCE_FAILED', `acceptance: ${message}`, cause);

export async function runAcceptance(options: AcceptanceOptions): Promise<AcceptanceResult> {
  const log = options.log ?? (() => undefined);
  const pollMs = options.pollMs ?? 1_000;
  const base = options.api.replace(/\/+$/, '');
  const dispatcher = new Agent({ connect: { cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca } });

  async function call(method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    let response: Awaited<ReturnType<typeof fetch>>;
    try {
      response = await fetch(`${base}${path}`, {
        method,
        dispatcher,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      throw failed(`${method} ${path}: no answer from ${base} (${errorMessage(error)})`, error);
    }
    const text = await response.text();
    let json: Record<string, unknown>;
    try {
      json = text === '' ? {} : (JSON.parse(text) as Record<string, unknown>);
    } catch {
      json = { text };
    }
    return { status: response.status, json };
  }

  async function request(body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const { status, json } = await call('POST', '/v1/requests', { ...body, requestId: randomUUID(), division: options.division, labels: { purpose: 'acceptance' } });
    if (status !== 202) throw failed(`POST /v1/requests (${String(body.action)}) answered ${status}: ${JSON.stringify(json)}`);
    return json;
  }

  async function waitFor(agentId: string, state: string, since: number): Promise<number> {
    let last = '(none yet)';
    while (Date.now() - since < options.timeoutMs) {
      const { status, json } = await call('GET', `/v1/agents/${agentId}`);
      if (status === 200 && typeof json.state === 'string') {
        if (json.state !== last) log(`agent ${agentId}: ${json.state}`);
        last = json.state;
        if (last === state) return Date.now() - since;
        if (DEAD_ENDS.has(last)) throw failed(`agent ${agentId} is ${last} (${typeof json.reason === 'string' ? json.reason : 'no reason given'}), not ${state}`);
      } else if (status !== 404) {
        // 404: ingest has accepted the request but the agent's row may not be visible yet.
        throw failed(`GET /v1/agents/${agentId} answered ${status}: ${JSON.stringify(json)}`);
      }
      await sleep(pollMs);
    }
    throw failed(`agent ${agentId} is ${last}, not ${state}, after ${Math.round(options.timeoutMs / 1000)} s`);
  }

  try {
    const key = `acceptance-${randomUUID()}`;
    const started = Date.now();
    const spec = { ...options.spec, resources: { cpuMillicores: 100, memoryMiB: 64 } };
    const accepted = await request({ idempotencyKey: key, action: 'INSTANTIATE', agentId: null, region: options.region, spec });
    const agentId = accepted.agentId;
    if (typeof agentId !== 'string') throw failed(`INSTANTIATE accepted without an agentId: ${JSON.stringify(accepted)}`);
    log(`instantiate accepted: agent ${agentId}`);
    const runningAfterMs = await waitFor(agentId, 'RUNNING', started);
    const destroying = Date.now();
    await request({ idempotencyKey: `${key}-destroy`, action: 'DESTROY', agentId, region: null, spec: null });
    const destroyedAfterMs = await waitFor(agentId, 'DESTROYED', destroying);
    return { agentId, runningAfterMs, destroyedAfterMs };
  } finally {
    await dispatcher.close();
  }
}
