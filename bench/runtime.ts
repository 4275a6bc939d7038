// Consumer runtime overhead: the same topic of small Avro records consumed by raw kafkajs (batch
// consumption that only decodes) and by the runtime with a no-op handler, in the same run.
import { createServer } from 'node:http';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { createTopicsAndWait } from '../lib/contracts/topics.ts';
import { localStackEnv } from '../dev/stack/endpoints.ts';
import { createAvroCodec, type AvroCodec } from '../lib/kafka/avro.ts';
import { rawDecodeRate } from './raw-decode.ts';
import { createKafkajsClient, kafkajsSsl } from '../lib/kafka/kafkajs.ts';
import { kafkaConfigShape, kafkaTlsOf, loadConfig } from '../lib/config.ts';
import { createLogger } from '../lib/logger.ts';
import { createMetrics } from '../lib/metrics.ts';
import { createWorker } from '../lib/runtime/worker.ts';
import { startTelemetry } from '../lib/telemetry.ts';

const schema = {
  type: 'record',
  name: 'BenchHeartbeat',
  namespace: 'io.agentmanager.bench',
  fields: [
    { name: 'agentId', type: 'string' },
    { name: 'sequence', type: 'long' },
    { name: 'sentAt', type: 'long' },
  ],
};

const env = { ...localStackEnv(), ...process.env } as Record<string, string>;
let groups = 0;
const uniqueSuffix = () => `${Date.now().toString(36)}-${groups++}`;
const brokers = env.KAFKA_BROKERS?.split(',') ?? [];
// The operator's credentials by default (`stack env`): the bench creates its own topic.
const tls = kafkaTlsOf(loadConfig(kafkaConfigShape, env));

async function produce(kafka: Kafka, registry: SchemaRegistry, topic: string, count: number, partitions: number): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await createTopicsAndWait(admin, [{ topic, numPartitions: partitions }, { topic: `${topic}.dlq`, numPartitions: 1 }]);
  await admin.disconnect();
  const { id } = await registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(schema) }, { subject: `${topic}-value` });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const started = Date.now();
  const chunk = 20_000;
  for (let sent = 0; sent < count; sent += chunk) {
    const n = Math.min(chunk, count - sent);
    const messages = await Promise.all(
      Array.from({ length: n }, async (_, i) => ({
        key: `agent-${(sent + i) % 5000}`,
        value: await registry.encode(id, { agentId: `agent-${(sent + i) % 5000}`, sequence: sent + i, sentAt: Date.now() }),
      })),
    );
    await producer.send({ topic, acks: -1, messages });
    if ((sent / chunk) % 10 === 0) process.stdout.write(`\rproduced ${sent + n} / ${count}`);
  }
  await producer.disconnect();
  console.log(`\rproduced ${count} records in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function runtime(codec: AvroCodec, topic: string, count: number): Promise<number> {
  const logger = createLogger('bench', 'warn');
  const kafka = createKafkajsClient({ clientId: 'bench', brokers, tls, logger });
  const producer = kafka.producer();
  await producer.connect();
  let seen = 0;
  let started = 0;
  let resolve: (ms: number) => void = () => undefined;
  const done = new Promise<number>((r) => (resolve = r));
  const worker = createWorker(
    {
      service: 'bench',
      topic,
      groupId: `${topic}-runtime-${uniqueSuffix()}`,
      concurrency: 4,
      deps: {},
      handler: async () => {
        if (started === 0) started = performance.now();
        if (++seen === count) resolve(performance.now() - started);
      },
    },
    { kafka, codec, producer, logger, metrics: createMetrics('bench', { defaultMetrics: false }) },
  );
  await worker.start();
  const progress = setInterval(() => process.stderr.write(`runtime: ${seen}\n`), 2000);
  const ms = await done;
  clearInterval(progress);
  await worker.stop();
  await producer.disconnect();
  return (count / ms) * 1000;
}

/** Milliseconds spent in garbage collection from now until the returned function is called. */
function gcTime(): () => number {
  let total = 0;
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) total += entry.duration;
  });
  observer.observe({ entryTypes: ['gc'] });
  return () => {
    observer.disconnect();
    return Math.round(total);
  };
}

const USAGE = `usage: npm run bench -- runtime [--records N] [--partitions P] [--rounds R] [--only raw|runtime] [--topic T] [--keep] [--telemetry]
  --rounds R    rounds after a warm-up; each measures both sides back to back, alternating which goes
                first (default 3). The figure is the median of the rounds' runtime/raw ratios.
  --topic T     reuse an existing topic of at least N bench records (not produced, not deleted)
  --keep        keep the produced topic (to reuse it with --topic)
  --telemetry   run the runtime with OpenTelemetry on, exporting to an in-process OTLP sink`;

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length === 0 ? Number.NaN : sorted.length % 2 === 1 ? (sorted[middle] ?? Number.NaN) : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
};

/** An OTLP/HTTP endpoint that accepts and drops spans, for `--telemetry`. */
async function startSpanSink(): Promise<{ url: string; requests: () => number; close: () => Promise<void> }> {
  let requests = 0;
  const server = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      requests++;
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}`, requests: () => requests, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      records: { type: 'string', default: '1000000' },
      partitions: { type: 'string', default: '4' },
      rounds: { type: 'string', default: '3' },
      only: { type: 'string' },
      topic: { type: 'string' },
      keep: { type: 'boolean', default: false },
      telemetry: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const count = Number(values.records);
  const partitions = Number(values.partitions);
  const rounds = Number(values.rounds);
  if (!(count > 0) || !(partitions > 0) || !(rounds > 0) || (values.only !== undefined && values.only !== 'raw' && values.only !== 'runtime')) {
    console.error(USAGE);
    process.exit(2);
  }
  const reuse = values.topic !== undefined;
  const topic = values.topic ?? `bench-runtime-${Date.now().toString(36)}`;
  const ssl = kafkajsSsl(tls);
  const kafka = new Kafka({ clientId: 'bench', brokers, ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING });
  const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });
  const newCodec = () => createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '' });
  console.log(`runtime benchmark: ${count} records, ${partitions} partitions, ${rounds} round(s) after a warm-up, telemetry ${values.telemetry ? 'on' : 'off'}, topic ${topic}`);
  if (!reuse) await produce(kafka, registry, topic, count, partitions);
  const sink = values.telemetry ? await startSpanSink() : undefined;
  const telemetry = sink ? startTelemetry({ serviceName: 'bench', otlpEndpoint: sink.url, logger: createLogger('bench', 'warn') }) : undefined;
  await telemetry?.ready;
  try {
    const measure = async (side: 'raw' | 'runtime', records: number, quiet = false): Promise<number | undefined> => {
      if (values.only !== undefined && values.only !== side) return undefined;
      const gc = gcTime();
      const rate = side === 'raw' ? await rawDecodeRate(kafka, newCodec(), topic, records) : await runtime(newCodec(), topic, records);
      const gcMs = gc();
      if (!quiet) console.log(`  ${side === 'raw' ? 'raw kafkajs eachBatch + decode' : 'runtime, no-op handler       '}: ${Math.round(rate)} records/s (gc ${gcMs} ms)`);
      return rate;
    };
    // Warm-up: both sides' code (and kafkajs's) compiled before anything is measured.
    await measure('raw', Math.min(count, 200_000), true);
    await measure('runtime', Math.min(count, 200_000), true);
    const rawRates: number[] = [];
    const runtimeRates: number[] = [];
    const ratios: number[] = [];
    // Each round measures both sides back to back (the same machine load), alternating which goes first.
    for (let round = 0; round < rounds; round++) {
      const first = round % 2 === 0 ? 'raw' : 'runtime';
      const second = first === 'raw' ? 'runtime' : 'raw';
      const a = await measure(first, count);
      const b = await measure(second, count);
      const rawRate = first === 'raw' ? a : b;
      const runtimeRate = first === 'raw' ? b : a;
      if (rawRate !== undefined) rawRates.push(rawRate);
      if (runtimeRate !== undefined) runtimeRates.push(runtimeRate);
      if (rawRate !== undefined && runtimeRate !== undefined) {
        ratios.push(runtimeRate / rawRate);
        console.log(`  round ${round + 1}: runtime/raw = ${(runtimeRate / rawRate).toFixed(2)}`);
      }
    }
    console.log(`raw kafkajs eachBatch + decode: ${Math.round(median(rawRates))} records/s (median; best ${Math.round(Math.max(...rawRates))})`);
    console.log(`runtime, no-op handler:        ${Math.round(median(runtimeRates))} records/s (median; best ${Math.round(Math.max(...runtimeRates))})`);
    console.log(`runtime/raw = ${median(ratios).toFixed(2)} (median of ${ratios.length} rounds)`);
    if (sink) console.log(`telemetry: ${sink.requests()} OTLP export requests`);
  } finally {
    await telemetry?.shutdown();
    await sink?.close();
    if (!reuse && !values.keep) await deleteTopic(kafka, topic);
  }
}

async function deleteTopic(kafka: Kafka, topic: string): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => undefined);
  await admin.disconnect();
  await fetch(`${env.SCHEMA_REGISTRY_URL}/subjects/${topic}-value`, { method: 'DELETE' }).catch(() => undefined);
}
