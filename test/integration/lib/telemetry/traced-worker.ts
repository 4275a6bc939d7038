// A traced worker process for telemetry.test.ts. It runs under Node itself (not in jest's VM, where
// the OTLP exporter's `import('http')` cannot run): telemetry on, a worker whose handler makes a
// database transaction and produces a record, each handled record's trace printed as a JSON line;
// on SIGTERM it drains, flushes the spans (telemetry shutdown) and exits 0.
import { z } from 'zod';
import { databaseConfigShape, kafkaConfigShape, kafkaTlsOf, loadConfig, resolveSecretFiles } from '../../../../lib/config.ts';
import { createPool, withTransaction } from '../../../../lib/db/pool.ts';
import { createAvroCodec } from '../../../../lib/kafka/avro.ts';
import { createKafkajsClient } from '../../../../lib/kafka/kafkajs.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createMetrics } from '../../../../lib/metrics.ts';
import { createEventProducer } from '../../../../lib/runtime/producer.ts';
import { onTerminationSignal, runCleanup } from '../../../../lib/runtime/shutdown.ts';
import { createWorker } from '../../../../lib/runtime/worker.ts';
import { startTelemetry } from '../../../../lib/telemetry.ts';

const config = loadConfig(
  {
    ...databaseConfigShape,
    ...kafkaConfigShape,
    SCHEMA_REGISTRY_URL: z.url(),
    OTEL_EXPORTER_OTLP_ENDPOINT: z.url(),
    TOPIC: z.string().min(1),
    OUT_TOPIC: z.string().min(1),
    GROUP_ID: z.string().min(1),
  },
  // Kafka credentials from KAFKA_SSL_*_FILE, as a service reads them.
  resolveSecretFiles(process.env),
);

const logger = createLogger('traced-worker', 'warn');
const telemetry = startTelemetry({ serviceName: 'traced-worker', otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT, logger });
await telemetry.ready;
const pool = createPool({ connectionString: config.DATABASE_URL, max: 2 });
const kafka = createKafkajsClient({ clientId: 'traced-worker', brokers: config.KAFKA_BROKERS, tls: kafkaTlsOf(config), logger });
const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL });
const producer = kafka.producer();
await producer.connect();
const events = createEventProducer(producer, codec);
const worker = createWorker(
  {
    service: 'traced-worker',
    topic: config.TOPIC,
    groupId: config.GROUP_ID,
    deps: { pool, events },
    handler: async (event: { id: string }, ctx) => {
      if (event.id === 'traced') {
        await withTransaction(ctx.deps.pool, (client) => client.query('SELECT 1 AS one'));
        await ctx.deps.pool.query('SELECT 2 AS two');
        await ctx.deps.events.send(config.OUT_TOPIC, [{ key: ctx.key ?? '', value: { id: 'forwarded', seq: 1, kind: 'ok' }, trace: ctx.trace }]);
      }
      // What the handler sees: its trace context and the traceId its logger carries.
      console.log(`handled ${JSON.stringify({ id: event.id, trace: ctx.trace, logTraceId: ctx.log.bindings().traceId as unknown })}`);
    },
  },
  { kafka, codec, producer, logger, metrics: createMetrics('traced-worker', { defaultMetrics: false }) },
);
onTerminationSignal(async () => {
  const failures = await runCleanup(
    [
      ['worker', () => worker.stop()],
      ['producer', () => producer.disconnect()],
      ['database', () => pool.end()],
      ['telemetry', () => telemetry.shutdown()],
    ],
    20_000,
    logger,
  );
  process.exit(failures.length === 0 ? 0 : 1);
}, logger);
await worker.start();
console.log('ready');
