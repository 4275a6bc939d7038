import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { startTelemetry, telemetryActive } from '../../../../lib/telemetry.ts';
import type { TraceContext } from '../../../../lib/tracing.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, readRecords, testRuntimeDeps } from '../../../support/runtime.ts';

/** The parts of an OTLP/HTTP JSON span the test looks at (ids are hex in OTLP JSON). */
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: { stringValue?: string; intValue?: string | number } }>;
  links?: Array<{ traceId: string; spanId: string }>;
}
interface OtlpExport {
  resourceSpans?: Array<{ resource?: { attributes?: Array<{ key: string; value: { stringValue?: string } }> }; scopeSpans?: Array<{ spans?: OtlpSpan[] }> }>;
}

/** An in-process OTLP/HTTP endpoint: records what is POSTed to /v1/traces (JSON), answers 200. */
async function startCollector(): Promise<{ url: string; exports: OtlpExport[]; requests: Array<{ path: string; type: string }>; close: () => Promise<void> }> {
  const exports: OtlpExport[] = [];
  const requests: Array<{ path: string; type: string }> = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      requests.push({ path: `${request.method} ${request.url}`, type: String(request.headers['content-type']) });
      if (request.method === 'POST' && request.url === '/v1/traces') {
        exports.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpExport);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } else {
        response.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}`, exports, requests, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

const spansOf = (exports: OtlpExport[]) => exports.flatMap((e) => e.resourceSpans ?? []).flatMap((r) => r.scopeSpans ?? []).flatMap((s) => s.spans ?? []);
const attribute = (span: OtlpSpan, key: string) => span.attributes?.find((a) => a.key === key)?.value;

describe('OpenTelemetry traces over OTLP/HTTP', () => {
  const env = testEnv();
  const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });

  it('is off without an endpoint: nothing is started and the runtime makes no spans', async () => {
    const telemetry = startTelemetry({ serviceName: 'off', logger: testRuntimeDeps('off').logger });
    await telemetry.ready;
    expect(telemetry.enabled).toBe(false);
    expect(telemetryActive()).toBe(false);
    await telemetry.shutdown();
  });

  it('shares one SDK between the callers of a process, stopped by the last one', async () => {
    const logger = testRuntimeDeps('shared').logger;
    const first = startTelemetry({ serviceName: 'a', otlpEndpoint: 'http://127.0.0.1:9/', logger });
    const second = startTelemetry({ serviceName: 'b', otlpEndpoint: 'http://127.0.0.1:9', logger });
    await Promise.all([first.ready, second.ready]);
    expect(first.ready).toBe(second.ready);
    expect(telemetryActive()).toBe(true);
    await first.shutdown();
    await first.shutdown(); // idempotent: does not count twice
    expect(telemetryActive()).toBe(true);
    await second.shutdown();
    expect(telemetryActive()).toBe(false);
    expect(() => startTelemetry({ serviceName: 'c', otlpEndpoint: 'not a url', logger })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT/);
  });

  it('exports a handle span continuing the record traceparent, with consume, produce and database spans around it', async () => {
    const collector = await startCollector();
    const topic = uniqueName('otel-in');
    const outTopic = uniqueName('otel-out');
    const cleanupIn = await createTestTopic(topic, 1);
    const cleanupOut = await createTestTopic(outTopic, 1);
    let child: ChildProcess | undefined;
    try {
      // The upstream producer's span, as a W3C traceparent header on the record.
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const upstreamSpanId = '00f067aa0ba902b7';
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const producer = rawKafka().producer();
      await producer.connect();
      await producer.send({
        topic,
        acks: -1,
        messages: [
          { key: 'agent-1', value: await registry.encode(id, { id: 'traced', seq: 1, kind: 'ok' }), headers: { traceparent: `00-${traceId}-${upstreamSpanId}-01` } },
          { key: 'agent-2', value: await registry.encode(id, { id: 'untraced', seq: 2, kind: 'ok' }) },
        ],
      });
      await producer.disconnect();

      // The worker runs as its own Node process (see traced-worker.ts), exporting to the collector above.
      child = spawn(process.execPath, [join(__dirname, 'traced-worker.ts')], {
        env: { ...process.env, ...env, OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, TOPIC: topic, OUT_TOPIC: outTopic, GROUP_ID: uniqueName('otel-group') },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child?.once('exit', (code) => resolve(code)));
      const seen = () =>
        new Map(
          stdout
            .split('\n')
            .filter((line) => line.startsWith('handled {'))
            .map((line) => JSON.parse(line.slice('handled '.length)) as { id: string; trace: TraceContext; logTraceId: string })
            .map((entry) => [entry.id, entry] as const),
        );
      await eventually(() => seen().size === 2 || child?.exitCode !== null, 60_000, 'both records handled').catch((error: unknown) => {
        throw new Error(`${String(error)}\nworker stdout:\n${stdout}\nworker stderr:\n${stderr.slice(-3000)}`);
      });
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      if (seen().size !== 2) throw new Error(`the traced worker handled ${seen().size} records:\n${stderr}`);

      expect(collector.requests.length).toBeGreaterThan(0);
      expect(collector.requests.every((r) => r.path === 'POST /v1/traces' && r.type.startsWith('application/json'))).toBe(true);
      const spans = spansOf(collector.exports);
      const resource = collector.exports[0]?.resourceSpans?.[0]?.resource?.attributes?.find((a) => a.key === 'service.name');
      expect(resource?.value.stringValue).toBe('traced-worker');

      // handle: same trace as the header, its parent is the header's span id.
      const handle = spans.find((s) => s.name === 'handle' && s.traceId === traceId);
      expect(handle).toBeDefined();
      expect(handle?.parentSpanId).toBe(upstreamSpanId);
      expect(handle?.kind).toBe(5); // SPAN_KIND_CONSUMER
      expect(attribute(handle as OtlpSpan, 'messaging.destination.name')?.stringValue).toBe(topic);
      // The handler's trace context and its logger agree with the span.
      expect(seen().get('traced')?.trace).toEqual({ traceId, spanId: handle?.spanId, flags: '01' });
      expect(seen().get('traced')?.logTraceId).toBe(traceId);

      // consume: one per batch, linked from the handle span.
      const consume = spans.find((s) => s.name === 'consume' && handle?.links?.some((l) => l.spanId === s.spanId));
      expect(consume?.kind).toBe(5);
      // A record without traceparent gets a handle span under its batch's consume span.
      const untraced = seen().get('untraced');
      const untracedHandle = spans.find((s) => s.name === 'handle' && s.spanId === untraced?.trace.spanId);
      expect(untracedHandle?.traceId).toBe(untraced?.trace.traceId);
      expect(spans.find((s) => s.spanId === untracedHandle?.parentSpanId)?.name).toBe('consume');
      expect(untraced?.logTraceId).toBe(untracedHandle?.traceId);

      // Database: a transaction span under handle with its BEGIN / SELECT / COMMIT, and a pool query under handle.
      const transaction = spans.find((s) => s.name === 'db transaction' && s.traceId === traceId);
      expect(transaction?.parentSpanId).toBe(handle?.spanId);
      const inTransaction = spans.filter((s) => s.parentSpanId === transaction?.spanId);
      expect(inTransaction.map((s) => s.name).sort()).toEqual(['BEGIN', 'COMMIT', 'SELECT']);
      expect(attribute(inTransaction.find((s) => s.name === 'SELECT') as OtlpSpan, 'db.query.text')?.stringValue).toBe('SELECT 1 AS one');
      const poolQuery = spans.find((s) => s.name === 'SELECT' && s.parentSpanId === handle?.spanId);
      expect(attribute(poolQuery as OtlpSpan, 'db.query.text')?.stringValue).toBe('SELECT 2 AS two');
      expect(poolQuery?.kind).toBe(3); // SPAN_KIND_CLIENT

      // produce: under handle; the record it sent carries it as its traceparent.
      const produce = spans.find((s) => s.name === 'produce' && s.traceId === traceId);
      expect(produce?.parentSpanId).toBe(handle?.spanId);
      expect(produce?.kind).toBe(4); // SPAN_KIND_PRODUCER
      const [forwarded] = await readRecords(outTopic, 1, uniqueName('otel-reader'));
      expect(forwarded?.headers.traceparent).toBe(`00-${traceId}-${produce?.spanId}-01`);
    } finally {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      await collector.close();
      await cleanupIn();
      await cleanupOut();
    }
  });
});
