/**
 * Instant queries against Prometheus' HTTP API (`GET /api/v1/query`), for the canary analysis. Every
 * failure is typed: PROMETHEUS_UNREACHABLE and PROMETHEUS_TIMEOUT (retryable: the server, the
 * network), PROMETHEUS_UNAVAILABLE (a 5xx or 503 while it starts), PROMETHEUS_QUERY_REFUSED (a 4xx:
 * a bad selector), PROMETHEUS_BAD_RESPONSE (not Prometheus' JSON).
 */
import { z } from 'zod';
import { errorMessage, permanentError, retryableError } from '../../lib/errors.ts';

const sample = z.tuple([z.number(), z.string()]);
const response = z.discriminatedUnion('status', [
  z.object({
    status: z.literal('success'),
    data: z.discriminatedUnion('resultType', [
      z.object({ resultType: z.literal('vector'), result: z.array(z.object({ metric: z.record(z.string(), z.string()), value: sample })) }),
      z.object({ resultType: z.literal('scalar'), result: sample }),
      z.object({ resultType: z.literal('matrix'), result: z.array(z.unknown()) }),
      z.object({ resultType: z.literal('string'), result: sample }),
    ]),
  }),
  z.object({ status: z.literal('error'), errorType: z.string().optional(), error: z.string().optional() }),
]);

export interface PrometheusClientOptions {
  /** Base URL, e.g. http://prometheus.monitoring:9090 (a path prefix is kept). */
  readonly url: string;
  /** Per request. */
  readonly timeoutMs?: number;
  /** Sent as `Authorization: Bearer …` when set. */
  readonly bearerToken?: string;
}

/** A parsed sample value: NaN and ±Inf (no observations, an empty histogram) are no value. */
function toNumber(text: string): number | null {
  const value = Number(text);
  return Number.isFinite(value) ? value : null;
}

/**
 * Returns a function that evaluates one PromQL expression at `time` (seconds since the epoch; one
 * instant for every query of an analysis) and answers the first sample's value, or null when the
 * result is empty or not a number.
 */
export function prometheusQuery(options: PrometheusClientOptions, time: number): (promql: string) => Promise<number | null> {
  let base: URL;
  try {
    base = new URL(options.url.endsWith('/') ? options.url : `${options.url}/`);
  } catch (error) {
    throw permanentError('CANARY_USAGE', `--prometheus expects a URL such as http://127.0.0.1:9090, not '${options.url}'`, error);
  }
  const timeoutMs = options.timeoutMs ?? 10_000;
  return async (promql) => {
    const url = new URL('api/v1/query', base);
    url.searchParams.set('query', promql);
    url.searchParams.set('time', time.toFixed(3));
    let reply: Response;
    try {
      reply = await fetch(url, {
        headers: { accept: 'application/json', ...(options.bearerToken ? { authorization: `Bearer ${options.bearerToken}` } : {}) },
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      if (error instanceof DOMException && error.name === 'TimeoutError') {
        throw retryableError('PROMETHEUS_TIMEOUT', `Prometheus at ${base.origin} did not answer within ${timeoutMs} ms`, error);
      }
      const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
      throw retryableError('PROMETHEUS_UNREACHABLE', `cannot reach Prometheus at ${base.origin} (${errorMessage(error)}${cause})`, error);
    }
    const text = await reply.text();
    let body: z.infer<typeof response> | undefined;
    try {
      body = response.parse(JSON.parse(text));
    } catch {
      body = undefined;
    }
    if (body?.status === 'error' || !reply.ok) {
      const detail = body?.status === 'error' ? `${body.errorType ?? 'error'}: ${body.error ?? ''}` : text.slice(0, 200);
      if (reply.status >= 400 && reply.status < 500) {
        throw permanentError('PROMETHEUS_QUERY_REFUSED', `Prometheus refused the query ${promql} (HTTP ${reply.status}, ${detail})`);
      }
      throw retryableError('PROMETHEUS_UNAVAILABLE', `Prometheus at ${base.origin} failed the query (HTTP ${reply.status}, ${detail})`);
    }
    if (body === undefined) throw permanentError('PROMETHEUS_BAD_RESPONSE', `${url.origin}${url.pathname} did not answer with Prometheus' JSON (HTTP ${reply.status}): ${text.slice(0, 200)}`);
    const data = body.data;
    switch (data.resultType) {
      case 'vector':
        return data.result[0] ? toNumber(data.result[0].value[1]) : null;
      case 'scalar':
        return toNumber(data.result[1]);
      default:
        throw permanentError('PROMETHEUS_BAD_RESPONSE', `the query ${promql} answered a ${data.resultType}, not a single number`);
    }
  };
}
