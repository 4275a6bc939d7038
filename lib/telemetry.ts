/**
 * OpenTelemetry traces, off by default. With no OTLP endpoint nothing is loaded or started and the
 * runtime skips every span call (the `@opentelemetry/api` no-op tracer answers any other caller);
 * with one, the Node SDK exports spans over OTLP/HTTP (JSON) to `<endpoint>/v1/traces`.
 *
 * Spans made by the runtime: `consume` per batch and `handle` per record (lib/runtime/worker.ts;
 * `handle` continues the record's W3C `traceparent`), `produce` per send (lib/runtime/producer.ts,
 * the outbox relay) and `outbox enqueue`, and one span per database transaction and query
 * (lib/db/pool.ts).
 *
 * The SDK's standard variables apply: `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g.
 * `parentbased_traceidratio` and `0.1`: a span per record is costly at full rate),
 * `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` for the batch span processor.
 */
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type SpanContext,
  type Tracer,
} from '@opentelemetry/api';
import type { Logger } from './logger.ts';
import type { TraceContext } from './tracing.ts';
import { errorCode, errorMessage, permanentError } from './errors.ts';

export interface TelemetryOptions {
  /** `service.name` of every span. */
  readonly serviceName: string;
  /** The OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`); spans go to `<endpoint>/v1/traces`. Absent: telemetry off. */
  readonly otlpEndpoint?: string;
  readonly logger: Logger;
  /** Export request timeout. Default 10 s. */
  readonly exportTimeoutMs?: number;
}

export interface Telemetry {
  /** True when an endpoint was configured (spans are recorded once `ready` resolved). */
  readonly enabled: boolean;
  /** Resolves once the SDK is registered (at once when off); rejects if it could not start. */
  readonly ready: Promise<void>;
  /** Exports what is buffered and stops the SDK; a no-op when off. */
  shutdown(): Promise<void>;
}

const TRACER_NAME = 'agent-manager';
let active = false;
let cachedTracer: Tracer | undefined;

/** True while an SDK started by `startTelemetry` runs: the runtime checks this once per batch before making spans. */
export function telemetryActive(): boolean {
  return active;
}

/** The project's tracer (the API's proxy: the no-op tracer until an SDK is registered). */
export function tracer(): Tracer {
  return (cachedTracer ??= trace.getTracer(TRACER_NAME));
}

const NOOP: Telemetry = { enabled: false, ready: Promise.resolve(), shutdown: async () => undefined };

/** The process's one SDK, shared by every `startTelemetry` caller (several services can share a process). */
let shared: { readonly ready: Promise<void>; readonly stop: () => Promise<void>; users: number; readonly endpoint: string } | undefined;

/**
 * Starts tracing when `otlpEndpoint` is set; the SDK's modules are loaded only then. A process has
 * one SDK: a second call shares the first one's (its endpoint and service name win), and the SDK
 * stops when the last caller shuts down.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const log = options.logger.child({ component: 'telemetry' });
  if (!options.otlpEndpoint) {
    log.debug('OpenTelemetry off (no OTEL_EXPORTER_OTLP_ENDPOINT)');
    return NOOP;
  }
  let url: URL;
  try {
    url = new URL('v1/traces', options.otlpEndpoint.endsWith('/') ? options.otlpEndpoint : `${options.otlpEndpoint}/`);
  } catch (error) {
    throw permanentError('CONFIG_INVALID', 'invalid configuration:\n  OTEL_EXPORTER_OTLP_ENDPOINT: expected the OTLP/HTTP endpoint URL', error);
  }
  // Logged without credentials or query (an endpoint may carry a token).
  const shownEndpoint = `${url.protocol}//${url.host}${url.pathname}`;
  if (shared) {
    if (shared.endpoint !== shownEndpoint) log.warn({ endpoint: shared.endpoint }, 'OpenTelemetry already runs in this process; its endpoint is kept');
  } else {
    let sdk: { shutdown(): Promise<void> } | undefined;
    const ready = (async () => {
      const [{ NodeSDK }, { OTLPTraceExporter }] = await Promise.all([import('@opentelemetry/sdk-node'), import('@opentelemetry/exporter-trace-otlp-http')]);
      const started = new NodeSDK({
        serviceName: options.serviceName,
        traceExporter: new OTLPTraceExporter({ url: url.toString(), timeoutMillis: options.exportTimeoutMs ?? 10_000 }),
        // Traces only: no metrics (prom-client serves those) and no OTLP logs (pino writes them).
        metricReaders: [],
        logRecordProcessors: [],
        instrumentations: [],
      });
      started.start();
      sdk = started;
      active = true;
      log.info({ endpoint: shownEndpoint }, 'OpenTelemetry tracing on');
    })();
    ready.catch((error: unknown) => log.error({ err: errorMessage(error) }, 'OpenTelemetry could not start; tracing stays off'));
    const stop = async () => {
      await ready.catch(() => undefined);
      active = false;
      if (!sdk) return;
      try {
        await sdk.shutdown();
      } catch (error) {
        log.warn({ err: errorMessage(error) }, 'OpenTelemetry shutdown failed (spans may be lost)');
      } finally {
        sdk = undefined;
        // A later startTelemetry in this process (tests) registers its own provider.
        trace.disable();
        context.disable();
        propagation.disable();
        cachedTracer = undefined;
      }
    };
    shared = { ready, stop, users: 0, endpoint: shownEndpoint };
  }
  const sdk = shared;
  sdk.users++;
  let stopped = false;
  return {
    enabled: true,
    ready: sdk.ready,
    async shutdown() {
      if (stopped) return;
      stopped = true;
      if (--sdk.users > 0) {
        // Another caller still uses the SDK: flush nothing here, it stops with the last one.
        return;
      }
      if (shared === sdk) shared = undefined;
      await sdk.stop();
    },
  };
}

/** The remote span context of a parsed `traceparent`. */
export function spanContextOf(parent: TraceContext): SpanContext {
  return { traceId: parent.traceId, spanId: parent.spanId, traceFlags: Number.parseInt(parent.flags, 16) & 0xff, isRemote: true };
}

/** An OpenTelemetry context whose parent is `parent` (a record's `traceparent`), or `base` when there is none. */
export function contextWithParent(parent: TraceContext | undefined, base: Context = ROOT_CONTEXT): Context {
  return parent === undefined ? base : trace.setSpanContext(base, spanContextOf(parent));
}

/** The W3C view of a span's context (what the logs carry and what goes into `traceparent`). */
export function traceOfSpan(span: Span): TraceContext {
  const { traceId, spanId, traceFlags } = span.spanContext();
  return { traceId, spanId, flags: (traceFlags & 0xff).toString(16).padStart(2, '0') };
}

/** A link to a remote span (e.g. each outbox row's `traceparent` from the relay's span). */
export function linkTo(parent: TraceContext): Link {
  return { context: spanContextOf(parent) };
}

/** Marks `span` failed with the error's code and message (never its context fields: they may carry data). */
export function recordSpanError(span: Span, error: unknown): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(error) });
  span.setAttribute('error.type', errorCode(error));
}

/**
 * Runs `work` inside a span that is the active context while it runs (children nest under it),
 * ends it, and marks it failed when `work` throws. Callers check `telemetryActive()` first when
 * they are on a hot path.
 */
export async function inSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; links?: Link[]; parent?: Context },
  work: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const span = tracer().startSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes, links: options.links }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), work, undefined, span);
  } catch (error) {
    recordSpanError(span, error);
    throw error;
  } finally {
    span.end();
  }
}

export { SpanKind };
